"""Attribution of downloaded bytes to origins and peers from connection samples."""
from __future__ import annotations

from kraken.p2p.attribution import ORIGIN, PEER, PeerSample, SourceAttribution

O1 = "10.0.0.1:15001"
P1 = "10.0.0.2:16001"
P2 = "10.0.0.3:16001"


def test_sampled_connections_are_attributed_exactly() -> None:
    a = SourceAttribution()
    assert a.observe([PeerSample(O1, ORIGIN, 100, 50.0), PeerSample(P1, PEER, 30, 10.0)]) == {ORIGIN: 100, PEER: 30}
    assert a.observe([PeerSample(O1, ORIGIN, 250, 50.0), PeerSample(P1, PEER, 30, 0.0)]) == {ORIGIN: 150, PEER: 0}
    assert a.settle(280) == {ORIGIN: 0, PEER: 0}
    assert a.by_source == {ORIGIN: 250, PEER: 30}


def test_tail_of_closed_connections_goes_to_their_source() -> None:
    a = SourceAttribution()
    a.observe([PeerSample(O1, ORIGIN, 100, 80.0), PeerSample(P1, PEER, 40, 20.0)])
    a.closed(O1, ORIGIN)  # the origin's connection closed at completion, 60 more bytes unseen
    a.observe([PeerSample(P1, PEER, 50, 20.0)])
    assert a.settle(210) == {ORIGIN: 60, PEER: 0}
    assert a.by_source == {ORIGIN: 160, PEER: 50}


def test_tail_is_split_by_last_rate_between_sources() -> None:
    a = SourceAttribution()
    a.observe([PeerSample(O1, ORIGIN, 100, 300.0), PeerSample(P1, PEER, 100, 100.0)])
    a.observe([])  # both closed after that sample
    assert a.settle(600) == {ORIGIN: 300, PEER: 100}
    assert sum(a.by_source.values()) == 600


def test_unsampled_download_is_split_per_connection() -> None:
    a = SourceAttribution()
    a.closed(O1, ORIGIN)
    a.closed(P1, PEER)
    a.closed(P2, PEER)
    added = a.settle(900)
    assert added == {ORIGIN: 300, PEER: 600}


def test_a_refused_duplicate_connection_does_not_close_the_open_one() -> None:
    a = SourceAttribution()
    a.observe([PeerSample(P1, PEER, 500, 10.0)])
    a.closed(P1, PEER)  # libtorrent refused a second connection to the same endpoint
    assert a.observe([PeerSample(P1, PEER, 700, 10.0)]) == {ORIGIN: 0, PEER: 200}
    assert a.settle(700) == {ORIGIN: 0, PEER: 0}


def test_reconnection_counts_the_new_connection_from_zero() -> None:
    a = SourceAttribution()
    a.observe([PeerSample(P1, PEER, 500, 10.0)])
    assert a.observe([PeerSample(P1, PEER, 20, 10.0)]) == {ORIGIN: 0, PEER: 20}
    assert a.settle(560) == {ORIGIN: 0, PEER: 40}


def test_residual_without_any_closed_connection_is_never_credited_to_origins() -> None:
    a = SourceAttribution()
    assert a.settle(10) == {ORIGIN: 0, PEER: 10}
