"""A cold blob served while it downloads: pieces in order, hashed once, the end held back.

A blob of more than one piece is downloaded with a :class:`LiveBlob` beside it. Its
:meth:`LiveBlob.hash_pieces` task (the download's) reads the pieces in order as libtorrent
verifies them (:meth:`P2PSession.read_piece`), keeps the last few for the clients streaming
them and feeds each to the sha256 in a worker thread (hashlib releases the GIL on large
buffers, so hashing runs beside the transfer and never on the loop). When the download is
complete the hash is too, a piece later: the cache adopts the file without a second pass.

Clients (:meth:`LiveBlob.chunks`, any number, joining at any time) get piece after piece as
the hashing task has read it: from its window, or read again from the torrent if they lag
behind it. While one streams, the next :data:`WINDOW` pieces go first
(:meth:`P2PSession.hurry`: top priority; the swarm slot's band stays ahead of the rest), so
they come in order; without a streaming client the download keeps its swarm-slot priorities.
The **last piece** is sent only once the whole blob's sha256 matched and the blob is in the
cache (:attr:`LiveBlob.outcome`): a mismatch or any failure raises instead, the response is
cut short (fewer bytes than its Content-Length) and no client ever receives a complete wrong
blob. Once the outcome is known, a client still behind reads the rest from the cached file.
A client going away stops only its own stream: the download and hash belong to the agent's
download task.
"""
from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path

from kraken.core.digest import Digest
from kraken.p2p import P2PSession

#: Pieces asked for first, from the hashing position on, while a client streams.
WINDOW = 8
#: Bytes of pieces the hashing task keeps for clients just behind it (at least one piece).
#: Each kept or prefetched piece is memory of the agent (bench memory: 16 MiB each put the
#: peak of a 1 GiB pull at 163 MiB, over the 150 MiB bound); a client further behind reads
#: its pieces again from the torrent.
KEEP_BYTES = 8 << 20
#: Bytes of piece reads the hashing task has in flight (libtorrent's disk threads read them
#: at once, and hold a copy until the alert is handled; at least one piece).
PREFETCH_BYTES = 8 << 20
#: Bytes per read of the cached file once the download is over.
FILE_CHUNK = 1 << 20


class LiveBlob:
    """One cold blob being downloaded: its in-order hash and the clients streaming it."""

    def __init__(
        self, session: P2PSession, info_hash: str, digest: Digest, size: int, piece_length: int, num_pieces: int
    ) -> None:
        self.session = session
        self.info_hash = info_hash
        self.digest = digest
        self.size = size
        self.piece_length = piece_length
        self.num_pieces = num_pieces
        #: The cached file once the blob is verified and cached; the download's error otherwise.
        self.outcome: asyncio.Future[Path] = asyncio.get_running_loop().create_future()
        self.streamers = 0
        self._kept: dict[int, bytes] = {}
        self._keep = max(1, KEEP_BYTES // piece_length)
        self._prefetch = max(1, PREFETCH_BYTES // piece_length)
        self._read = 0  # pieces 0.._read-1 read by the hashing task
        self._hurried = 0  # pieces 0.._hurried-1 had deadlines set
        self._started = False  # the torrent is in the session (hash_pieces runs)
        self._progress = asyncio.Event()  # set (and replaced) each time _read grows

    # ------------------------------------------------------------ the download's side

    async def hash_pieces(self) -> Digest:
        """Read every piece in order as it is verified and hash it; the blob's digest.

        Started once the torrent is in the session; P2PError if it leaves it."""
        self._started = True
        hasher = self.digest.hasher()
        hashing: asyncio.Future[None] | None = None
        reads: deque[asyncio.Future[bytes]] = deque()
        try:
            for index in range(self.num_pieces):
                if self.streamers:
                    self._hurry(index)
                while len(reads) < self._prefetch and index + len(reads) < self.num_pieces:
                    reads.append(asyncio.ensure_future(self.session.read_piece(self.info_hash, index + len(reads))))
                data = await reads.popleft()
                self._publish(index, data)
                if hashing is not None:
                    await hashing
                hashing = asyncio.ensure_future(asyncio.to_thread(hasher.update, data))
            if hashing is not None:
                await hashing
        finally:
            # A thread still hashing runs to its end anyway; the hasher is not used after that.
            for pending in (*reads, hashing):
                if pending is not None and not pending.done():
                    pending.cancel()
            await asyncio.gather(*reads, return_exceptions=True)
        return Digest(self.digest.algorithm, hasher.hexdigest())

    def settle(self, path: Path | None, error: BaseException | None = None) -> None:
        """The download is over: ``path`` in the cache, or ``error``; wakes every client."""
        if not self.outcome.done():
            if path is not None:
                self.outcome.set_result(path)
            else:
                self.outcome.set_exception(error or RuntimeError("download ended"))
                self.outcome.exception()  # retrieved: clients may all have left
        self._kept.clear()
        self._wake()

    def _hurry(self, index: int) -> None:
        if not self._started:
            return  # hash_pieces hurries the first pieces itself when it starts
        end = min(index + WINDOW, self.num_pieces)
        if end > self._hurried:
            self.session.hurry(self.info_hash, range(max(index, self._hurried), end))
            self._hurried = end

    def _publish(self, index: int, data: bytes) -> None:
        self._kept[index] = data
        self._kept.pop(index - self._keep, None)
        self._read = index + 1
        self._wake()

    def _wake(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    # ------------------------------------------------------------ the clients' side

    async def first_piece(self) -> bool:
        """Wait for the first piece or the outcome; True if streaming can start (a piece is
        there and the download has not failed)."""
        self.streamers += 1  # the first pieces are hurried for this client already
        try:
            self._hurry(0)
            while self._read == 0 and not self.outcome.done():
                await self._progress.wait()
        finally:
            self.streamers -= 1
        return self._read > 0 and not (self.outcome.done() and self.outcome.exception() is not None)

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The blob's bytes in order; raises (the response must be cut short) if the download
        fails or the blob's sha256 does not match, before its last piece is sent."""
        self.streamers += 1
        try:
            sent = 0
            for index in range(self.num_pieces):
                if index == self.num_pieces - 1:
                    await asyncio.shield(self.outcome)  # raises CorruptBlob & co.
                data = await self._piece(index)
                if data is None:
                    break
                yield data
                sent += len(data)
            if sent < self.size:
                async for chunk in _file_chunks(await asyncio.shield(self.outcome), sent, self.size):
                    yield chunk
        finally:
            self.streamers -= 1

    async def _piece(self, index: int) -> bytes | None:
        """Piece ``index`` once the hashing task read it; None once the outcome is known
        (the rest comes from the cached file)."""
        while self._read <= index and not self.outcome.done():
            if self.streamers:
                self._hurry(self._read)
            await self._progress.wait()
        if self.outcome.done():
            self.outcome.result()  # raises the download's error
            return None
        data = self._kept.get(index)
        if data is None:  # behind the hashing task's window: read it again
            data = await self.session.read_piece(self.info_hash, index)
        return data


async def _file_chunks(path: Path, start: int, end: int) -> AsyncIterator[bytes]:
    """Bytes ``start``..``end`` of the cached file, read in a worker thread."""
    fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
    try:
        offset = start
        while offset < end:
            chunk = await asyncio.to_thread(os.pread, fd, min(FILE_CHUNK, end - offset), offset)
            if not chunk:
                raise OSError(f"{path}: ends at {offset} bytes, expected {end}")
            offset += len(chunk)
            yield chunk
    finally:
        os.close(fd)
