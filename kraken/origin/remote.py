"""Copying a blob to another cluster's origins: the blob half of cross-cluster tag replication.

Kraken's ``POST /namespace/<ns>/blobs/<d>/remote/<remote>``: build-index's replication task
(kraken.buildindex.remotes) asks the blob's owner here to copy the blob to the origin cluster
``remote`` (comma-separated ``host:port`` of that cluster's origins, as the remote build-index's
``GET /origin`` names them). The owner makes sure it holds the blob (fetching it from its
backend first: 202 meanwhile, as for reads), asks the remote cluster which of its origins own
the digest (``GET /blobs/<d>/locations`` on the first that answers), and uploads the blob to
the first owner that takes it, as an ordinary push there: that origin replicates it within its
own ring and writes it back to its own backend. A remote that already has the blob answers
409, which is success. The remote origin hashes what it receives, so nothing unverified lands
there; with TLS the calls carry this cluster's client certificate, which the remote must trust.

A copy can outlast any request timeout (a large blob to a far cluster), so it runs in the
background (:class:`RemoteCopies`), once per (blob, cluster) however often it is asked: the
request is answered 202 while it runs, as a backend fetch is, and the caller polls; its
outcome (the remote origin that took the blob, or the failure) is kept for
:data:`OUTCOME_MEMORY` seconds for the polls to find.
"""
from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from pathlib import Path

import aiohttp

from kraken.core.digest import Digest
from kraken.http.addresses import split_host_port
from kraken.http.client import HttpClient, HTTPStatusError
from kraken.log import get_logger
from kraken.origin.client import OriginClient
from kraken.tasks import SingleFlight, TaskOwner

log = get_logger("origin")

#: What makes one remote origin unusable for this copy: the next one is tried.
_REMOTE_ERRORS = (aiohttp.ClientError, TimeoutError, HTTPStatusError, ConnectionError, OSError)
#: Seconds a finished copy's outcome is kept for the caller's polls.
OUTCOME_MEMORY = 60.0
#: Outcomes kept at most, and copies running at once.
MAX_OUTCOMES = 1024
CONCURRENCY = 4


class RemoteUnavailable(Exception):
    """No origin of the remote cluster answered, or none of its owners took the blob."""


def parse_remote(remote: str) -> list[str]:
    """``host:port[,host:port...]`` -> the addresses; ValueError for anything else."""
    hosts = [h.strip() for h in remote.split(",") if h.strip()]
    if not hosts or len(hosts) > 64:
        raise ValueError(f"remote must be host:port[,host:port...], got {remote!r}")
    for host in hosts:
        split_host_port(host)  # ValueError naming the bad entry
    return hosts


async def copy_to_remote(http: HttpClient, namespace: str, digest: Digest, path: Path, remote_hosts: list[str]) -> str:
    """Upload the cached file ``path`` to an owner of ``digest`` in the remote cluster; the
    origin that took it."""
    owners = await _remote_owners(http, digest, remote_hosts)
    errors: list[str] = []
    for owner in owners:
        try:
            await OriginClient(owner, http).upload_file(namespace, digest, path)
        except _REMOTE_ERRORS as e:
            errors.append(f"{owner}: {type(e).__name__}: {e}")
            continue
        log.info("blob copied to remote cluster", namespace=namespace, digest=digest, remote_origin=owner)
        return owner
    raise RemoteUnavailable(f"no owner of {digest} in the remote cluster took it ({'; '.join(errors)})")


async def _remote_owners(http: HttpClient, digest: Digest, remote_hosts: list[str]) -> list[str]:
    errors: list[str] = []
    for host in remote_hosts:
        try:
            owners = await OriginClient(host, http).locations(digest)
        except _REMOTE_ERRORS as e:
            errors.append(f"{host}: {type(e).__name__}: {e}")
            continue
        return owners or [host]
    raise RemoteUnavailable(f"no origin of the remote cluster answered ({'; '.join(errors)})")


class RemoteCopies:
    """The origin's copies to other clusters: one per (blob, cluster) at a time, at most
    :data:`CONCURRENCY` running, owned by the origin (cancelled at its shutdown)."""

    def __init__(self, owner: TaskOwner, http: HttpClient) -> None:
        self._http = http
        self._flights: SingleFlight[tuple[Digest, tuple[str, ...]], str] = SingleFlight(
            owner, "remote-copy", report_orphans=False)
        self._limit = asyncio.Semaphore(CONCURRENCY)
        self._outcomes: OrderedDict[tuple[Digest, tuple[str, ...]], tuple[float, str | Exception]] = OrderedDict()

    def request(self, namespace: str, digest: Digest, path: Path, remote: list[str]) -> str | None:
        """The remote origin that took the blob, once copied; None while the copy runs (it is
        started if need be). Raises the copy's failure (:class:`RemoteUnavailable`, ...) once."""
        key = (digest, tuple(remote))
        outcome = self._outcomes.pop(key, None)
        if outcome is not None and time.monotonic() - outcome[0] < OUTCOME_MEMORY:
            if isinstance(outcome[1], Exception):
                raise outcome[1]
            return outcome[1]
        self._flights.start(key, lambda: self._copy(key, namespace, path))
        return None

    async def _copy(self, key: tuple[Digest, tuple[str, ...]], namespace: str, path: Path) -> str:
        digest, remote = key
        try:
            async with self._limit:
                owner = await copy_to_remote(self._http, namespace, digest, path, list(remote))
        except Exception as e:  # noqa: BLE001 - kept for the caller's next poll, which gets a 503
            log.warning("copy to remote cluster failed", digest=digest, remote=",".join(remote),
                        error=f"{type(e).__name__}: {e}")
            failure = e if isinstance(e, RemoteUnavailable) else RemoteUnavailable(f"{type(e).__name__}: {e}")
            self._remember(key, failure)
            raise failure from e
        self._remember(key, owner)
        return owner

    def _remember(self, key: tuple[Digest, tuple[str, ...]], outcome: str | Exception) -> None:
        self._outcomes[key] = (time.monotonic(), outcome)
        while len(self._outcomes) > MAX_OUTCOMES:
            self._outcomes.popitem(last=False)
