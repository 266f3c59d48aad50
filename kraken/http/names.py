"""Route-level name validation for the internal HTTP APIs (origin, agent, tracker).

Their routes take a repository name as the ``{ns}`` path segment; it becomes a storage
namespace, a backend path and a log field, so every component refuses a bad one the same way
(400 ``{"error"}``, before any handler runs) with the grammar of :mod:`kraken.core.names`.
"""
from __future__ import annotations

from aiohttp import web

from kraken.core.names import InvalidName, check_name
from kraken.http.app import Handler
from kraken.http.errors import JsonError


@web.middleware
async def check_namespace(request: web.Request, handler: Handler) -> web.StreamResponse:
    """400 for a route whose ``ns`` segment is not a valid repository name."""
    ns = request.match_info.get("ns")
    if ns is not None:
        try:
            check_name(ns)
        except InvalidName as e:
            raise JsonError(400, str(e)) from None
    return await handler(request)
