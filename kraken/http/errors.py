"""The one error-body format of Kraken's internal HTTP APIs, and each component's error table.

Every answer of an internal API (origin, tracker's metainfo, build-index, testfs, the agent
server, ``/readiness`` everywhere) that is not what the request asked for carries
``{"error": "message", ...extra}`` as JSON; extra keys say more where a client acts on them
(build-index's ``missing``, ``limit``). The registry API (``/v2``) keeps OCI error JSON
(:mod:`kraken.registry.errors`) and the tracker's announce its bencoded ``failure reason``.

A component maps its own exceptions to HTTP statuses in one :data:`ErrorTable` next to its
``server.py``, given to :func:`kraken.http.app.create_app`: handlers raise, the app answers.
A handler catches an exception itself only when the answer depends on the request (the same
exception means something else in another route).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

JSON = "application/json"

#: Exception class -> status, or (status, message template): ``{error}`` in the template is
#: the exception's text. The most specific class of a raised exception that is listed wins.
ErrorTable = Mapping[type[BaseException], int | tuple[int, str]]


def json_error(status: int, message: str, *, headers: Mapping[str, str] | None = None,
               **extra: Any) -> web.Response:
    """The answer ``{"error": message, **extra}`` with ``status``."""
    body = json.dumps({"error": message, **extra})
    return web.Response(status=status, text=body, content_type=JSON, headers=headers)


class JsonError(Exception):
    """Raised by a handler (or a helper it calls) to answer :func:`json_error` at once;
    rendered by the app's error middleware, like any exception with ``to_response()``."""

    def __init__(self, status: int, message: str, *, headers: Mapping[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers
        self.extra = extra

    def to_response(self) -> web.Response:
        return json_error(self.status, str(self), headers=self.headers, **self.extra)


def lookup(table: ErrorTable, error: BaseException) -> tuple[int, str] | None:
    """``(status, message)`` for ``error`` from the table, or None when it is not listed."""
    for cls in type(error).__mro__:
        entry = table.get(cls)
        if entry is None:
            continue
        status, template = (entry, "{error}") if isinstance(entry, int) else entry
        return status, template.format(error=error)
    return None


def error_message(body: str | bytes) -> str:
    """The message of an error body: its ``error`` field, or the text itself when it is not
    this format (another server, a proxy in between, aiohttp's own 404)."""
    text = body.decode(errors="replace") if isinstance(body, bytes) else body
    try:
        doc = json.loads(text)
    except ValueError:
        return text.strip()
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        return doc["error"]
    return text.strip()


def error_extra(body: str | bytes) -> dict[str, Any]:
    """The extra keys of an error body (``{}`` when it is not this format)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return {}
    if not isinstance(doc, dict) or "error" not in doc:
        return {}
    return {k: v for k, v in doc.items() if k != "error"}
