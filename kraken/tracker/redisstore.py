"""The Redis peer store: lets several trackers share one view of every swarm.

Per torrent (hex info-hash ``H``), all in one hash slot (``{H}``) so the scripts also run on
a Redis Cluster:

- ``<prefix>{H}:seeders`` and ``<prefix>{H}:leechers``: sorted sets of ``ip/port`` scored by
  the time of the peer's last announce (Redis server time, in ms, so trackers with skewed
  clocks agree on expiry);
- ``<prefix>{H}:ids``: hash ``ip/port`` -> peer_id;
- ``<prefix>{H}:digest``: the blob's digest.

Each announce is one round trip (a Lua script): it moves the peer into its class, drops up to
:data:`EXPIRE_BATCH` expired entries per class, samples with ``ZRANDMEMBER`` (filtering any
expired entry still there), and pushes every key's TTL out, so a torrent nobody announces
for vanishes whole after one peer TTL. ``ZRANDMEMBER`` needs Redis >= 6.2.
"""
from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from kraken.core.digest import Digest, DigestError
from kraken.tracker.config import RedisConfig, split_host_port
from kraken.tracker.peerstore import Peer, PeerAddr, PeerStore, PeerStoreError, Swarm

EXPIRE_BATCH = 1000

_NOW = """
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cutoff = now - tonumber(ARGV[1])
"""

# KEYS: seeders, leechers, ids, digest. ARGV: ttl ms, member, peer_id, "1" if complete, sample.
_ANNOUNCE = _NOW + """
local seeders, leechers, ids, digest = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local member, sample = ARGV[2], tonumber(ARGV[5])
local mine, other = leechers, seeders
if ARGV[4] == "1" then mine, other = seeders, leechers end
redis.call("ZREM", other, member)
redis.call("ZADD", mine, now, member)
redis.call("HSET", ids, member, ARGV[3])
local result = {0, 0, redis.call("GET", digest), {}, {}}
for i, key in ipairs({seeders, leechers}) do
  local expired = redis.call("ZRANGEBYSCORE", key, "-inf", "(" .. cutoff, "LIMIT", 0, %d)
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
        table.insert(result[i + 3], m)
        table.insert(result[i + 3], peer_ids[j] or "")
      end
    end
  end
end
redis.call("PEXPIRE", ids, ARGV[1])
if result[3] then redis.call("PEXPIRE", digest, ARGV[1]) end
return result
""" % EXPIRE_BATCH

# KEYS: seeders, leechers, ids. ARGV: ttl ms, member.
_LEAVE = _NOW + """
redis.call("ZREM", KEYS[1], ARGV[2])
redis.call("ZREM", KEYS[2], ARGV[2])
redis.call("HDEL", KEYS[3], ARGV[2])
return {redis.call("ZCOUNT", KEYS[1], cutoff, "+inf"), redis.call("ZCOUNT", KEYS[2], cutoff, "+inf")}
"""


def _member(addr: PeerAddr) -> str:
    return f"{addr.ip}/{addr.port}"


def _peers(flat: list[bytes], complete: bool) -> list[Peer]:
    """``[member, peer_id, member, peer_id, ...]`` from the script -> peers."""
    peers = []
    for member, peer_id in zip(flat[::2], flat[1::2], strict=True):
        ip, _, port = member.decode().rpartition("/")
        peers.append(Peer(PeerAddr(ip, int(port)), peer_id, complete))
    return peers


class RedisPeerStore(PeerStore):
    def __init__(self, config: RedisConfig, ttl: float) -> None:
        host, port = split_host_port(config.addr)
        self._client = aioredis.Redis(
            host=host, port=port, db=config.db, password=config.password or None,
            socket_timeout=config.timeout, socket_connect_timeout=config.timeout,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        )
        self._prefix = config.key_prefix
        self._ttl_ms = max(1, int(ttl * 1000))
        self._announce = self._client.register_script(_ANNOUNCE)
        self._leave = self._client.register_script(_LEAVE)

    def _key(self, info_hash: bytes, name: str) -> str:
        return f"{self._prefix}{{{info_hash.hex()}}}:{name}"

    async def announce(self, info_hash: bytes, peer: Peer, sample: int) -> Swarm:
        keys = [self._key(info_hash, k) for k in ("seeders", "leechers", "ids", "digest")]
        args = [self._ttl_ms, _member(peer.addr), peer.peer_id, "1" if peer.complete else "0", sample]
        seeders, leechers, digest, sampled_seeders, sampled_leechers = await self._call(self._announce, keys, args)
        return Swarm(
            seeders=_peers(sampled_seeders, True),
            leechers=_peers(sampled_leechers, False),
            num_seeders=int(seeders),
            num_leechers=int(leechers),
            digest=_parse_digest(digest),
        )

    async def leave(self, info_hash: bytes, addr: PeerAddr) -> Swarm:
        keys = [self._key(info_hash, k) for k in ("seeders", "leechers", "ids")]
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
        await self._client.aclose()

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return await script(keys=keys, args=args)
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
