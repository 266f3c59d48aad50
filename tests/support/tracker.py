"""Announces as libtorrent sends them, and the tracker's answers decoded."""
from __future__ import annotations

import socket
from dataclasses import dataclass
from urllib.parse import quote_from_bytes

from kraken.tracker.peerstore import PeerAddr


def announce_query(ih: bytes, port: int, *, left: int = 0, event: str = "", numwant: int | None = None,
                   peer_id: bytes | None = None) -> str:
    """An announce's query string as libtorrent sends it (raw bytes percent-encoded, compact=1)."""
    peer_id = peer_id or f"-LT2110-{port:012d}".encode()
    qs = (f"info_hash={quote_from_bytes(ih, safe='')}&peer_id={quote_from_bytes(peer_id, safe='')}"
          f"&port={port}&uploaded=0&downloaded=0&left={left}&corrupt=0&key=1a2b3c4d"
          f"&compact=1&no_peer_id=1&supportcrypto=1&redundant=0")
    if event:
        qs += f"&event={event}"
    if numwant is not None:
        qs += f"&numwant={numwant}"
    return qs


@dataclass
class Answer:
    status: int
    body: dict

    @property
    def peers(self) -> list[PeerAddr]:
        raw = self.body[b"peers"]
        return [PeerAddr(socket.inet_ntoa(raw[i:i + 4]), int.from_bytes(raw[i + 4:i + 6], "big"))
                for i in range(0, len(raw), 6)]
