"""The tracker's pure parts: bencoding, announce parsing, the handout policy, the metainfo
cache, single-flight and the config. Sockets and stores: test_tracker_server.py."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import quote_from_bytes

import libtorrent as lt
import pytest

from kraken.config import ConfigError, build, load_config
from kraken.core.bencode import bencode
from kraken.core.digest import Digest
from kraken.http.addresses import split_host_port
from kraken.tracker.announce import AnnounceError, compact, encode_peers, parse_announce, peer_ip
from kraken.tracker.config import TrackerConfig
from kraken.tracker.handout import handout
from kraken.tracker.memstore import MemoryPeerStore
from kraken.tracker.metainfo import MetainfoCache
from kraken.tracker.peerstore import Peer, PeerAddr, Swarm
from tests.support.waiting import until

ROOT = Path(__file__).resolve().parents[2]


# ---- bencode -------------------------------------------------------------------------------


def test_bencode_is_what_libtorrent_decodes() -> None:
    value = {"peers": b"\x7f\x00\x00\x01\x1a\xe1", "interval": 2, "z": [1, -3, b"", "x"], b"a": {"b": 0}}
    as_bytes = {b"peers": b"\x7f\x00\x00\x01\x1a\xe1", b"interval": 2, b"z": [1, -3, b"", b"x"], b"a": {b"b": 0}}
    encoded = bencode(value)
    assert encoded == lt.bencode(as_bytes)
    assert lt.bdecode(encoded) == as_bytes
    assert encoded.startswith(b"d1:ad1:bi0ee8:intervali2e")  # keys sorted by their bytes


@pytest.mark.parametrize("bad", [True, 1.5, None, {1: 2}])
def test_bencode_refuses_what_has_no_encoding(bad: object) -> None:
    with pytest.raises(TypeError):
        bencode(bad)  # type: ignore[arg-type]


def test_bencode_refuses_a_key_given_as_str_and_bytes() -> None:
    with pytest.raises(ValueError):
        bencode({"a": 1, b"a": 2})


# ---- announce parsing ----------------------------------------------------------------------

EVERY_BYTE = bytes(range(256))


def query(info_hash: bytes, peer_id: bytes = b"-LT2110-abcdefghijkl", **params: object) -> str:
    base = f"info_hash={quote_from_bytes(info_hash, safe='')}&peer_id={quote_from_bytes(peer_id, safe='')}"
    params = {"port": 6881, "uploaded": 0, "downloaded": 0, "left": 0, "compact": 1, **params}
    return base + "".join(f"&{k}={v}" for k, v in params.items())


@pytest.mark.parametrize("start", range(0, 256, 20))
def test_info_hash_and_peer_id_are_raw_bytes(start: int) -> None:
    info_hash = (EVERY_BYTE * 2)[start:start + 20]  # %00, '&', '=', '%', '+' and non-UTF-8 bytes
    peer_id = bytes(reversed(info_hash))
    parsed = parse_announce(query(info_hash, peer_id, event="started", numwant=200, key="abc", redundant=0))
    assert (parsed.info_hash, parsed.peer_id, parsed.port, parsed.event, parsed.numwant) == (
        info_hash, peer_id, 6881, "started", 200)


def test_unencoded_unreserved_bytes_and_a_literal_plus_are_themselves() -> None:
    parsed = parse_announce("info_hash=abcdefghi%2B%2b+-._~0123&peer_id=-LT2110-abcdefghijkl&port=1&left=5")
    assert parsed.info_hash == b"abcdefghi+++-._~0123" and not parsed.complete


@pytest.mark.parametrize("qs, reason", [
    ("peer_id=-LT2110-abcdefghijkl&port=1&left=0", "missing info_hash"),
    (query(b"x" * 19), "info_hash must be 20 bytes"),
    (query(b"x" * 20, b"short"), "peer_id must be 20 bytes"),
    (query(b"x" * 20, port=0), "port 0 out of range"),
    (query(b"x" * 20, port=70000), "out of range"),
    (query(b"x" * 20, left=-1), "left must be a non-negative integer"),
    (query(b"x" * 20, numwant="lots"), "numwant must be"),
    (query(b"x" * 20, event="exploded"), "unknown event"),
])
def test_malformed_announces_say_why(qs: str, reason: str) -> None:
    with pytest.raises(AnnounceError, match=reason):
        parse_announce(qs)


def test_peer_ip_is_the_source_unless_the_ip_parameter_is_trusted() -> None:
    assert peer_ip("10.0.0.5", "6.6.6.6", trust_claimed=False) == "10.0.0.5"
    assert peer_ip("10.0.0.5", "6.6.6.6", trust_claimed=True) == "6.6.6.6"
    assert peer_ip("::ffff:127.0.0.1", None, trust_claimed=False) == "127.0.0.1"
    assert peer_ip("::1", None, trust_claimed=False) == "::1"
    with pytest.raises(AnnounceError, match="not an IP address"):
        peer_ip("10.0.0.5", "evil.example.com", trust_claimed=True)


def test_compact_peers_and_peers6() -> None:
    v4, v6 = compact([PeerAddr("127.0.0.1", 6881), PeerAddr("::1", 80), PeerAddr("10.1.2.3", 65535)])
    assert v4 == bytes([127, 0, 0, 1, 0x1A, 0xE1, 10, 1, 2, 3, 0xFF, 0xFF])
    assert v6 == bytes(15) + b"\x01" + b"\x00\x50"
    answer = lt.bdecode(encode_peers(0.1, 3, 4, [PeerAddr("::1", 80)]))
    assert answer == {b"interval": 1, b"min interval": 1, b"complete": 3, b"incomplete": 4,
                      b"peers": b"", b"peers6": v6}


# ---- handout policy ------------------------------------------------------------------------


def peer(n: int, complete: bool, peer_id: bytes | None = None) -> Peer:
    return Peer(PeerAddr("127.0.0.1", 10000 + n), peer_id or f"-XX0000-{n:012d}".encode(), complete)


def test_handout_order_exclusions_and_limit() -> None:
    me = peer(0, False)
    stale_me = peer(99, True, me.peer_id)  # the announcer before it changed its port
    origin_that_announces = peer(50, True)
    seeders = [peer(n, True) for n in range(1, 4)] + [stale_me, origin_that_announces]
    leechers = [me] + [peer(n, False) for n in range(10, 14)]
    origins = [PeerAddr("127.0.0.1", 10050), PeerAddr("127.0.0.2", 15001)]
    swarm = Swarm(seeders=seeders, leechers=leechers, num_seeders=5, num_leechers=5)

    chosen = handout(swarm, origins, me, limit=50)
    assert set(chosen.seeders) == {p.addr for p in seeders[:3]}
    assert set(chosen.origins) == set(origins) and len(chosen.origins) == 2
    assert set(chosen.leechers) == {p.addr for p in leechers[1:]}
    assert chosen.ordered() == chosen.seeders + chosen.origins + chosen.leechers

    assert handout(swarm, origins, me, limit=4).ordered()[3] in origins  # 3 seeders, then origins
    assert len(handout(swarm, origins, me, limit=2).ordered()) == 2
    assert handout(swarm, origins, me, limit=0).ordered() == []


def test_origins_have_room_however_many_seeders_and_unconfirmed_seeders_come_last() -> None:
    me = peer(0, False)
    real = [peer(n, True) for n in range(1, 4)]
    fake = [peer(n, True) for n in range(100, 160)]
    leechers = [peer(n, False) for n in range(10, 12)]
    origins = [PeerAddr("127.0.0.2", 15001), PeerAddr("127.0.0.3", 15001)]
    swarm = Swarm(seeders=fake + real, leechers=leechers, num_seeders=63, num_leechers=2)
    confirmed = {p.addr for p in real}.__contains__

    chosen = handout(swarm, origins, me, limit=50, confirmed=confirmed)
    assert set(chosen.seeders) == {p.addr for p in real} and set(chosen.origins) == set(origins)
    assert set(chosen.leechers) == {p.addr for p in leechers} and len(chosen.unconfirmed) == 50 - 3 - 2 - 2
    assert chosen.ordered() == chosen.seeders + chosen.origins + chosen.leechers + chosen.unconfirmed
    # Without any confirmed seeder the origins are still there; with room for only them, only them.
    assert set(handout(swarm, origins, me, 50, confirmed=lambda _: False).origins) == set(origins)
    assert set(handout(swarm, origins, me, 2, confirmed=confirmed).ordered()) == set(origins)
    # A complete announcer (a seeder) gets confirmed seeders first; origins only fill what is left.
    seeder = peer(1, True)
    assert handout(swarm, origins, seeder, 2, confirmed=confirmed).origins == []


async def test_handout_is_random_within_a_class() -> None:
    """The store's samples come in random order and the handout keeps it."""
    store = MemoryPeerStore(ttl=60)
    info_hash = b"h" * 20
    for n in range(1, 30):
        await store.announce(info_hash, peer(n, True), 0)
    orders = set()
    for _ in range(20):
        swarm = await store.announce(info_hash, peer(0, False), 51)
        orders.add(tuple(handout(swarm, [], peer(0, False), 50).seeders))
    assert len(orders) > 1
    seeders = [peer(n, True) for n in range(1, 30)]
    assert handout(Swarm(seeders=seeders), [], peer(0, False), 50).seeders == [s.addr for s in seeders]


def test_an_origin_is_not_handed_itself() -> None:
    origin = PeerAddr("127.0.0.1", 15001)
    me = Peer(origin, b"-LT2110-originorigin", True)
    assert handout(Swarm(), [origin, PeerAddr("127.0.0.2", 15001)], me, 50).origins == [PeerAddr("127.0.0.2", 15001)]


# ---- metainfo cache ------------------------------------------------------------------------

D = [Digest.of_bytes(bytes([i])) for i in range(4)]


def test_cache_evicts_the_least_recently_used_beyond_its_size() -> None:
    cache = MetainfoCache(max_bytes=250, ttl=60)
    cache.put(D[0], b"a" * 100, b"h0")
    cache.put(D[1], b"b" * 100, b"h1")
    assert cache.get(D[0]) is not None  # D[1] is now the least recently used
    cache.put(D[2], b"c" * 100, b"h2")
    assert cache.get(D[1]) is None
    assert [cache.get(d) is not None for d in (D[0], D[2])] == [True, True]
    cache.put(D[3], b"d" * 251, b"h3")  # larger than the whole cache: not kept
    assert cache.get(D[3]) is None and cache.get(D[0]) is not None


async def test_cache_entries_expire() -> None:
    cache = MetainfoCache(max_bytes=1000, ttl=0.05)
    cache.put(D[0], b"x", b"h")
    assert cache.get(D[0]).info_hash == b"h"
    await until(lambda: cache.get(D[0]) is None, timeout=5, what="the cache entry to expire", interval=0.01)


# ---- config --------------------------------------------------------------------------------


def test_checked_in_configs_load() -> None:
    dev = load_config(TrackerConfig, ROOT / "config/tracker/development.yaml")
    assert dev.listen.port == 15003 and dev.announce_interval == 2.0 and dev.store == "memory"
    assert dev.origin_p2p == {"127.0.0.1:15002": "127.0.0.1:15001"}
    base = load_config(TrackerConfig, ROOT / "config/tracker/base.yaml")
    assert base.max_peers_returned == 50 and base.peer_ttl == 3600.0


def test_an_overlay_may_replace_the_origins() -> None:
    config = load_config(TrackerConfig, ROOT / "config/tracker/development.yaml", {
        "origins": {"hosts": ["10.0.0.1:15002"]}, "origin_p2p": {"10.0.0.1:15002": "10.0.0.1:15001"},
    })
    assert config.origins.hosts == ["10.0.0.1:15002"]


@pytest.mark.parametrize("settings, error", [
    ({"announce_interval": "10s", "peer_ttl": "10s"}, "peer_ttl must be longer"),
    ({"origins": {"hosts": ["o1:15002"]}}, "no P2P address for origin"),
    ({"origins": {"hosts": ["o1:15002"]}, "origin_p2p": {"o1:15002": "o1"}}, "not host:port"),
    ({"store": "etcd"}, "expected one of"),
    ({"max_peers_returned": 0}, "max_peers_returned"),
    ({"redis": {"addr": "nohost"}}, "not host:port"),
])
def test_bad_configs_are_refused(settings: dict, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        build(TrackerConfig, settings)


def test_split_host_port() -> None:
    assert split_host_port("[::1]:15001") == ("::1", 15001)
    assert split_host_port("origin-1.example:15001") == ("origin-1.example", 15001)
