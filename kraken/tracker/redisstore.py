"""The Redis peer store: lets several trackers share one view of every swarm.

Per torrent (hex info-hash ``H``), all in one hash slot (``{H}``) so the scripts also run on
a Redis Cluster:

- ``<prefix>{H}:seeders`` and ``<prefix>{H}:leechers``: sorted sets of ``ip/port`` scored by
  the time of the peer's last announce (Redis server time, in ms, so trackers with skewed
  clocks agree on expiry);
- ``<prefix>{H}:ids``: hash ``ip/port`` -> peer_id;
- ``<prefix>{H}:ip:<ip>``: sorted set of the torrent's ``ip/port`` members at that address,
  scored like the classes, for the ``peers_per_ip`` limit;
- ``<prefix>{H}:digest``: the blob's digest.

and, for the torrent limits, in a slot of their own (``{limits}``):

- ``<prefix>{limits}:torrents``: sorted set of hex info-hashes by last announce;
- ``<prefix>{limits}:ip:<ip>``: the same, of the torrents announced from that address.

An announce is one or two Lua script calls, sent in one pipeline with those of the other
announces of the same loop turn (:mod:`kraken.tracker.redisbatch`). The first counts the torrent against the
limits (or refuses it); it is skipped while this tracker admitted the same address and torrent
less than a quarter of the TTL ago (:class:`_Admitted`, at most :data:`ADMITTED_SIZE`
remembered), so a periodic re-announce costs one round trip and still refreshes its torrent's
count long before it would expire. The second moves the peer into its class, evicts that address's least
recently seen peers beyond ``peers_per_ip``, drops up to
:data:`EXPIRE_BATCH` expired entries per class, samples with ``ZRANDMEMBER`` (filtering any
expired entry still there), and pushes every key's TTL out, so a torrent nobody announces
for vanishes whole after one peer TTL. ``ZRANDMEMBER`` needs Redis >= 6.2.
"""
from __future__ import annotations

import random
import time
from collections import OrderedDict
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from kraken.core.digest import Digest, DigestError
from kraken.http.addresses import split_host_port
from kraken.tracker.config import LimitsConfig, RedisConfig
from kraken.tracker.peerstore import AnnounceRefused, Peer, PeerAddr, PeerStore, PeerStoreError, Swarm
from kraken.tracker.redisbatch import ScriptBatcher

EXPIRE_BATCH = 1000
#: (address, torrent) admissions remembered: beyond, the least recently admitted is asked again.
ADMITTED_SIZE = 100_000

_NOW = """
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cutoff = now - tonumber(ARGV[1])
"""

# KEYS: all torrents, this address's torrents. ARGV: ttl ms, hex info-hash, per-address limit
# (0: exempt), total limit. Returns "ok", "ip" or "total".
_ADMIT = _NOW + """
local all, mine, hash = KEYS[1], KEYS[2], ARGV[2]
local per_ip, total = tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call("ZREMRANGEBYSCORE", all, "-inf", "(" .. cutoff)
redis.call("ZREMRANGEBYSCORE", mine, "-inf", "(" .. cutoff)
if per_ip > 0 and not redis.call("ZSCORE", mine, hash) and redis.call("ZCARD", mine) >= per_ip then
  return "ip"
end
if not redis.call("ZSCORE", all, hash) and redis.call("ZCARD", all) >= total then return "total" end
redis.call("ZADD", all, now, hash)
redis.call("ZADD", mine, now, hash)
redis.call("PEXPIRE", all, ARGV[1])
redis.call("PEXPIRE", mine, ARGV[1])
return "ok"
"""

# KEYS: seeders, leechers, ids, digest, this address's peers. ARGV: ttl ms, member, peer_id,
# "1" if complete, sample, peers per address (0: exempt).
_ANNOUNCE = _NOW + """
local seeders, leechers, ids, digest, here = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local member, sample, per_ip = ARGV[2], tonumber(ARGV[5]), tonumber(ARGV[6])
local mine, other = leechers, seeders
if ARGV[4] == "1" then mine, other = seeders, leechers end
redis.call("ZREM", other, member)
redis.call("ZADD", mine, now, member)
redis.call("HSET", ids, member, ARGV[3])
if per_ip > 0 then
  redis.call("ZADD", here, now, member)
  local extra = redis.call("ZCARD", here) - per_ip
  if extra > 0 then
    local evicted = redis.call("ZRANGE", here, 0, extra - 1)
    redis.call("ZREM", here, unpack(evicted))
    redis.call("ZREM", seeders, unpack(evicted))
    redis.call("ZREM", leechers, unpack(evicted))
    redis.call("HDEL", ids, unpack(evicted))
  end
  redis.call("PEXPIRE", here, ARGV[1])
end
local result = {0, 0, redis.call("GET", digest), {}, {}}
for i, key in ipairs({seeders, leechers}) do
  local expired = redis.call("ZRANGEBYSCORE", key, "-inf", "(" .. cutoff, "LIMIT", 0, EXPIRE_BATCH)
  if #expired > 0 then
    redis.call("ZREM", key, unpack(expired))
    redis.call("HDEL", ids, unpack(expired))
  end
  redis.call("PEXPIRE", key, ARGV[1])
  result[i] = redis.call("ZCOUNT", key, cutoff, "+inf")
  if sample > 0 then
    local drawn = redis.call("ZRANDMEMBER", key, sample, "WITHSCORES")
    local picked = {}
    for j = 1, #drawn, 2 do
      if tonumber(drawn[j + 1]) >= cutoff then table.insert(picked, drawn[j]) end
    end
    if #picked > 0 then
      local peer_ids = redis.call("HMGET", ids, unpack(picked))
      for j, m in ipairs(picked) do
        local id = peer_ids[j] or ""
        table.insert(result[i + 3], string.char(#m) .. m .. string.char(#id) .. id)
      end
    end
  end
  result[i + 3] = table.concat(result[i + 3])
end
redis.call("PEXPIRE", ids, ARGV[1])
if result[3] then redis.call("PEXPIRE", digest, ARGV[1]) end
return result
""".replace("EXPIRE_BATCH", str(EXPIRE_BATCH))

# KEYS: seeders, leechers, ids, this address's peers. ARGV: ttl ms, member.
_LEAVE = _NOW + """
redis.call("ZREM", KEYS[1], ARGV[2])
redis.call("ZREM", KEYS[2], ARGV[2])
redis.call("HDEL", KEYS[3], ARGV[2])
redis.call("ZREM", KEYS[4], ARGV[2])
return {redis.call("ZCOUNT", KEYS[1], cutoff, "+inf"), redis.call("ZCOUNT", KEYS[2], cutoff, "+inf")}
"""


class _Admitted:
    """Admissions this tracker got recently, by (info_hash, ip, exempt), oldest first. Only
    admissions are remembered: a refused announce asks Redis again next time."""

    def __init__(self, fresh_for: float) -> None:
        self._fresh_for = fresh_for
        self._at: OrderedDict[tuple[bytes, str, bool], float] = OrderedDict()

    def fresh(self, key: tuple[bytes, str, bool], now: float) -> bool:
        at = self._at.get(key)
        return at is not None and now - at < self._fresh_for

    def add(self, key: tuple[bytes, str, bool], now: float) -> None:
        self._at[key] = now
        self._at.move_to_end(key)
        while len(self._at) > ADMITTED_SIZE:
            self._at.popitem(last=False)


def _member(addr: PeerAddr) -> str:
    return f"{addr.ip}/{addr.port}"


def _peers(packed: bytes, complete: bool) -> list[Peer]:
    """The script's sample (``len member len peer_id`` per peer, one byte per length: one
    string, because redis-py parses a reply element by element in Python) -> peers, shuffled:
    ``ZRANDMEMBER`` picks at random but does not answer in random order."""
    peers = []
    at, end = 0, len(packed)
    while at < end:
        size = packed[at]
        ip, _, port = packed[at + 1:at + 1 + size].decode().rpartition("/")
        at += 1 + size
        size = packed[at]
        peers.append(Peer(PeerAddr(ip, int(port)), packed[at + 1:at + 1 + size], complete))
        at += 1 + size
    random.shuffle(peers)
    return peers


class RedisPeerStore(PeerStore):
    def __init__(self, config: RedisConfig, ttl: float, limits: LimitsConfig | None = None) -> None:
        host, port = split_host_port(config.addr)
        pool = aioredis.BlockingConnectionPool(
            max_connections=config.max_connections, timeout=config.timeout,
            host=host, port=port, db=config.db, password=config.password or None,
            socket_timeout=config.timeout, socket_connect_timeout=config.timeout,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        )
        self._client: aioredis.Redis = aioredis.Redis.from_pool(pool)
        self._prefix = config.key_prefix
        self._ttl_ms = max(1, int(ttl * 1000))
        self._limits = limits or LimitsConfig()
        self._admitted = _Admitted(ttl / 4)
        self._admit = self._client.register_script(_ADMIT)
        self._announce = self._client.register_script(_ANNOUNCE)
        self._leave = self._client.register_script(_LEAVE)
        self._batcher = ScriptBatcher(self._client)

    def _key(self, info_hash: bytes, name: str) -> str:
        return f"{self._prefix}{{{info_hash.hex()}}}:{name}"

    async def announce(self, info_hash: bytes, peer: Peer, sample: int, *, exempt: bool = False) -> Swarm:
        limits = self._limits
        key, now = (info_hash, peer.addr.ip, exempt), time.monotonic()
        if not self._admitted.fresh(key, now):
            admitted = await self._call(
                self._admit, [f"{self._prefix}{{limits}}:torrents", f"{self._prefix}{{limits}}:ip:{peer.addr.ip}"],
                [self._ttl_ms, info_hash.hex(), 0 if exempt else limits.torrents_per_ip, limits.torrents],
            )
            if admitted != b"ok":
                if admitted == b"ip":
                    raise AnnounceRefused("ip", limits.torrents_per_ip)
                raise AnnounceRefused("total", limits.torrents)
            self._admitted.add(key, now)
        keys = [self._key(info_hash, k) for k in ("seeders", "leechers", "ids", "digest", f"ip:{peer.addr.ip}")]
        args = [self._ttl_ms, _member(peer.addr), peer.peer_id, "1" if peer.complete else "0", sample,
                0 if exempt else limits.peers_per_ip]
        seeders, leechers, digest, sampled_seeders, sampled_leechers = await self._call(self._announce, keys, args)
        return Swarm(
            seeders=_peers(sampled_seeders, True),
            leechers=_peers(sampled_leechers, False),
            num_seeders=int(seeders),
            num_leechers=int(leechers),
            digest=_parse_digest(digest),
        )

    async def leave(self, info_hash: bytes, addr: PeerAddr) -> Swarm:
        keys = [self._key(info_hash, k) for k in ("seeders", "leechers", "ids", f"ip:{addr.ip}")]
        seeders, leechers = await self._call(self._leave, keys, [self._ttl_ms, _member(addr)])
        return Swarm(num_seeders=int(seeders), num_leechers=int(leechers))

    async def set_digest(self, info_hash: bytes, digest: Digest) -> None:
        try:
            await self._client.set(self._key(info_hash, "digest"), str(digest), px=self._ttl_ms)
        except (RedisError, OSError) as e:
            raise PeerStoreError(f"redis: {type(e).__name__}: {e}") from e

    async def ping(self) -> None:
        try:
            await self._client.ping()
        except (RedisError, OSError) as e:
            raise PeerStoreError(f"redis: {type(e).__name__}: {e}") from e

    async def close(self) -> None:
        await self._batcher.close()
        await self._client.aclose()

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """The script's reply; sent in one pipeline with the calls of concurrent announces
        (:mod:`kraken.tracker.redisbatch`)."""
        try:
            return await self._batcher.call(script, keys, args)
        except (RedisError, OSError) as e:
            raise PeerStoreError(f"redis: {type(e).__name__}: {e}") from e


def _parse_digest(value: bytes | None) -> Digest | None:
    """The stored digest; a value this code did not write reads as unknown, not as an error."""
    if value is None:
        return None
    try:
        return Digest.parse(value.decode(errors="replace"))
    except DigestError:
        return None
