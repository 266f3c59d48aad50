"""Streaming an upload to an origin while its bytes are still arriving.

A registry client pushes a blob's bytes first and names its digest last, but the ring owner
of a blob depends on its digest. :class:`UploadStream` sends the bytes to an origin as they
arrive (one long PATCH of unknown length to the origin's digest-less upload), so that by the
client's final PUT the origin holds them and the commit is one short request. The caller
keeps its own verified copy and falls back to an ordinary upload to the owner if the stream
broke or went to an origin that turns out not to own the digest.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from kraken.core.digest import Digest
from kraken.http.client import HttpClient, HTTPStatusError
from kraken.log import get_logger

log = get_logger("kraken.origin.stream")

QUEUE_CHUNKS = 64


class StreamBroken(Exception):
    """The stream to the origin failed; the caller falls back to its own copy."""


class DigestRefused(Exception):
    """The origin refused to commit an upload (HTTP 400 to the commit): its bytes do not hash
    to the digest named. The origin kept nothing of it."""


async def commit_upload(http: HttpClient, url: str, params: dict[str, str] | None) -> None:
    """PUT ``url`` (an upload's commit): 201 (committed) and 409 (cached already) are
    success, 400 is :class:`DigestRefused`."""
    try:
        resp = await http.request("PUT", url, ok=(201, 409), params=params)
    except HTTPStatusError as e:
        if e.status == 400:
            raise DigestRefused(e.message) from None
        raise
    resp.release()


class UploadStream:
    """Bytes queued here are sent to ``origin`` by one background PATCH request."""

    def __init__(self, http: HttpClient, origin: str, upload_url: str) -> None:
        self.origin = origin
        self._http = http
        self._url = upload_url
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_CHUNKS)
        self.sent = 0
        self._task = asyncio.get_running_loop().create_task(self._send(), name=f"upload-stream:{upload_url}")
        # Its failure is reported by write/commit; mark it retrieved so an abandoned stream
        # does not log "Task exception was never retrieved".
        self._task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _body(self) -> AsyncIterator[bytes]:
        while (chunk := await self._queue.get()) is not None:
            yield chunk

    async def _send(self) -> int:
        headers = {"Content-Range": "0-", "Content-Type": "application/octet-stream"}
        resp = await self._http.request("PATCH", self._url, data=self._body(), headers=headers, retry=False)
        resp.release()
        return int(resp.headers.get("Range", "0-0").partition("-")[2])

    async def write(self, chunk: bytes) -> None:
        """Queue ``chunk``; waits while the queue is full (the origin sets the pace)."""
        if self._task.done():
            raise StreamBroken(f"stream to {self.origin} ended: {self._failure()}")
        if self._queue.full():
            put = asyncio.ensure_future(self._queue.put(chunk))
            await asyncio.wait({put, self._task}, return_when=asyncio.FIRST_COMPLETED)
            if not put.done():
                put.cancel()
                raise StreamBroken(f"stream to {self.origin} ended: {self._failure()}")
        else:
            self._queue.put_nowait(chunk)
        self.sent += len(chunk)

    def _failure(self) -> str:
        if self._task.cancelled():
            return "cancelled"
        error = self._task.exception()
        return f"{type(error).__name__}: {error}" if error else "finished early"

    async def commit(self, digest: Digest) -> None:
        """End the body, then have the origin verify the bytes against ``digest`` and keep them
        (:class:`DigestRefused` when they do not match)."""
        await self._end_body()
        try:
            received = await self._task
        except Exception as e:  # noqa: BLE001 - any failure of the PATCH means the stream broke
            raise StreamBroken(f"stream to {self.origin} failed: {type(e).__name__}: {e}") from e
        if received != self.sent:
            raise StreamBroken(f"origin {self.origin} received {received} of {self.sent} bytes")
        await commit_upload(self._http, self._url, {"digest": str(digest)})

    async def _end_body(self) -> None:
        if self._task.done():
            return
        put = asyncio.ensure_future(self._queue.put(None))
        await asyncio.wait({put, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()

    async def abort(self) -> None:
        """Stop sending and drop what the origin received (best effort: it also expires)."""
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        try:
            (await self._http.request("DELETE", self._url, ok=(204, 404), retry=False)).release()
        except Exception as e:  # noqa: BLE001 - the origin expires abandoned uploads anyway
            log.info("could not drop a streamed upload", origin=self.origin, error=f"{type(e).__name__}: {e}")
