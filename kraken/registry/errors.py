"""Registry errors in the wire format clients expect.

Docker, containerd and the OCI clients read ``{"errors": [{"code", "message", "detail"}]}`` and
act on the code (e.g. retry on ``UNAVAILABLE``, re-upload on ``BLOB_UPLOAD_UNKNOWN``), so each
failure maps to one code with the status the distribution spec gives it. A
:class:`RegistryError` renders itself (``to_response``), which the app middleware of
:func:`kraken.http.app.create_app` uses.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web

API_VERSION_HEADER = "Docker-Distribution-API-Version"
API_VERSION = "registry/2.0"

# code -> (default HTTP status, default message)
CODES: dict[str, tuple[int, str]] = {
    "BLOB_UNKNOWN": (404, "blob unknown to registry"),
    "BLOB_UPLOAD_INVALID": (400, "blob upload invalid"),
    "BLOB_UPLOAD_UNKNOWN": (404, "blob upload unknown to registry"),
    "DIGEST_INVALID": (400, "provided digest did not match uploaded content"),
    "MANIFEST_BLOB_UNKNOWN": (400, "manifest references a blob unknown to registry"),
    "MANIFEST_INVALID": (400, "manifest invalid"),
    "MANIFEST_UNKNOWN": (404, "manifest unknown"),
    "NAME_INVALID": (400, "invalid repository name"),
    "NAME_UNKNOWN": (404, "repository name not known to registry"),
    "SIZE_INVALID": (400, "provided length did not match content length"),
    "TAG_INVALID": (400, "manifest tag did not match URI"),
    "PAGINATION_NUMBER_INVALID": (400, "invalid number of results requested"),
    "RANGE_INVALID": (416, "invalid content range"),
    "UNSUPPORTED": (405, "The operation is unsupported."),
    "UNAUTHORIZED": (401, "authentication required"),
    "DENIED": (403, "requested access to the resource is denied"),
    "UNAVAILABLE": (503, "service unavailable"),
    "TOOMANYREQUESTS": (429, "too many requests"),
    "UNKNOWN": (500, "unknown error"),
}


class RegistryError(Exception):
    """One registry error (or several, see :meth:`combine`), rendered as the spec's JSON body."""

    def __init__(
        self,
        code: str,
        message: str | None = None,
        status: int | None = None,
        detail: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        default_status, default_message = CODES[code]
        self.code = code
        self.message = message or default_message
        self.status = status or default_status
        self.detail = detail
        self.headers = dict(headers or {})
        self.others: tuple[RegistryError, ...] = ()
        super().__init__(f"{code}: {self.message}" + (f" ({detail})" if detail is not None else ""))

    @classmethod
    def combine(cls, errors: Iterable[RegistryError]) -> RegistryError:
        """One exception reporting several errors (e.g. every missing blob of a manifest).

        The status and headers are the first error's."""
        first, *rest = errors
        first.others = tuple(rest)
        return first

    def as_json(self) -> dict:
        return {"errors": [_entry(e) for e in (self, *self.others)]}

    def to_response(self) -> web.Response:
        headers = {API_VERSION_HEADER: API_VERSION, **self.headers}
        return web.json_response(self.as_json(), status=self.status, headers=headers)


def _entry(error: RegistryError) -> dict:
    return {"code": error.code, "message": error.message, "detail": error.detail}
