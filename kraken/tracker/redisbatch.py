"""Script calls of concurrent announces sent to Redis together, one pipeline per loop turn.

Every announce is a Lua script call, and at thousands of announces per second most of the
tracker's time went into redis-py's per-command path: a pool checkout, a write, a wait for the
reply, a read, each with its own awaits. Calls made in the same turn of the event loop are
gathered and sent as one non-transactional pipeline (``EVALSHA`` each), so that path runs once
per batch; each caller still gets its own reply or error. A script Redis does not know yet
(first use, or a restarted server) is loaded and that call retried alone.

Bounded: a batch holds at most :data:`MAX_BATCH` calls (the rest wait for the next one), and the
pool's ``max_connections`` still caps the connections in use.
"""
from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from kraken.tasks import TaskOwner

MAX_BATCH = 256

_Call = tuple[AsyncScript, list[str], list[Any], "asyncio.Future[Any]"]


class ScriptBatcher:
    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._pending: list[_Call] = []
        self._tasks = TaskOwner("redis-batches")
        self._flushing = False

    async def call(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        """``script(keys, args)``'s reply, sent with the other calls of this loop turn."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((script, keys, args, future))
        if not self._flushing:
            self._flushing = True
            self._tasks.spawn(self._flush(), "redis-batch")
        return await future

    async def close(self) -> None:
        await self._tasks.close()
        for *_, future in self._pending:
            future.cancel()
        self._pending.clear()

    async def _flush(self) -> None:
        try:
            await asyncio.sleep(0)  # let this turn's other announces add their calls
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                await self._send(batch)
        finally:
            self._flushing = False

    async def _send(self, batch: list[_Call]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for script, keys, args, _ in batch:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        try:
            replies = await pipe.execute(raise_on_error=False)
        except BaseException as e:
            for *_, future in batch:
                if not future.done():
                    future.set_exception(e if isinstance(e, Exception) else asyncio.CancelledError())
            if not isinstance(e, Exception):
                raise
            return
        for (script, keys, args, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue
            if isinstance(reply, NoScriptError):
                self._tasks.spawn(_alone(script, keys, args, future), "redis-script-load")
            elif isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)


async def _alone(script: AsyncScript, keys: list[str], args: list[Any], future: asyncio.Future[Any]) -> None:
    """One call on its own: redis-py's script call loads the script when Redis lacks it."""
    try:
        reply = await script(keys=keys, args=args)
    except Exception as e:
        if not future.done():
            future.set_exception(e)
        return
    if not future.done():
        future.set_result(reply)
