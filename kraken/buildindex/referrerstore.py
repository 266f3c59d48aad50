"""Referrer lists in build-index's backend, next to the tags, so they survive restarts and every
build-index node, proxy and agent sharing the backend sees the same list.

Each referrer is its own object (its descriptor's JSON), named

    <repo>/_referrers/<subject algorithm>/<subject hex>/referrer:<algorithm>-<hex>

Why one object per referrer: two pushes of referrers of one subject through different nodes
then never overwrite each other (a shared list object would need a read-modify-write the
backends cannot make atomic). Why this name: it has the ``repo:tag`` shape the ``docker_tag``
layout stores (``docker/registry/v2/repositories/<repo>/_referrers/.../_manifests/tags/...``),
its "repository" contains a ``_referrers`` component no valid repository name has (so tag
listings and the catalog skip it, and Docker distribution, which ignores ``_`` directories,
can share the bucket), and the subject is a directory of its own, so listing one subject's
referrers walks only that directory in both the ``docker_tag`` and ``identity`` layouts.
"""
from __future__ import annotations

import asyncio
import json

from kraken.backend import Backend, BackendNotFound, BackendRouter
from kraken.core.digest import Digest, DigestError
from kraken.log import get_logger
from kraken.registry.referrer_index import ReferrerDescriptor

log = get_logger("build-index")

READ_CONCURRENCY = 16
_ENTRY = "referrer"


class ReferrerLimit(Exception):
    """The subject already has as many referrers as a list may hold."""


class ReferrerStore:
    """Referrers by (repository, subject); ``max_referrers`` bounds each list, on write and on
    read (nodes racing past the bound on write still never answer a longer list)."""

    def __init__(self, router: BackendRouter, max_referrers: int) -> None:
        self._router = router
        self.max_referrers = max_referrers

    @staticmethod
    def _directory(repo: str, subject: Digest) -> str:
        return f"{repo}/_referrers/{subject.algorithm}/{subject.hex}/"

    def _name(self, repo: str, subject: Digest, referrer: Digest) -> str:
        return f"{self._directory(repo, subject)}{_ENTRY}:{referrer.algorithm}-{referrer.hex}"

    async def put(self, repo: str, subject: Digest, descriptor: ReferrerDescriptor) -> None:
        """Add (or rewrite: same bytes) ``descriptor``; ReferrerLimit if the list is full."""
        backend = self._router.for_namespace(repo)
        existing = await self._names(backend, repo, subject)
        if descriptor.digest not in existing and len(existing) >= self.max_referrers:
            raise ReferrerLimit(f"subject {subject} already has {len(existing)} referrers "
                                f"(limit {self.max_referrers})")
        await backend.upload_bytes(repo, self._name(repo, subject, descriptor.digest), descriptor.encode())
        log.info("referrer stored", repo=repo, subject=subject, referrer=descriptor.digest)

    async def list(self, repo: str, subject: Digest) -> list[ReferrerDescriptor]:
        """The referrers of ``subject``, by digest, at most ``max_referrers`` of them."""
        backend = self._router.for_namespace(repo)
        names = sorted((await self._names(backend, repo, subject)).items())[: self.max_referrers]
        limit = asyncio.Semaphore(READ_CONCURRENCY)

        async def read(digest: Digest, name: str) -> ReferrerDescriptor | None:
            async with limit:
                try:
                    data = await backend.download_bytes(repo, name)
                except BackendNotFound:
                    return None
            try:
                descriptor = ReferrerDescriptor.from_json(json.loads(data))
            except ValueError as e:
                log.warning("unreadable referrer entry skipped", name=name, error=e)
                return None
            if descriptor.digest != digest:
                log.warning("referrer entry names another digest, skipped", name=name, digest=descriptor.digest)
                return None
            return descriptor

        found = await asyncio.gather(*(read(d, n) for d, n in names))
        return [d for d in found if d is not None]

    async def _names(self, backend: Backend, repo: str, subject: Digest) -> dict[Digest, str]:
        """Referrer digest -> object name, for every entry of the subject in the backend.

        The ``identity`` layout lists names with ``/`` where they had ``:``, so both separators
        are accepted after the directory."""
        directory = self._directory(repo, subject)
        entries: dict[Digest, str] = {}
        for name in await backend.list(directory):
            rest = name[len(directory):]
            if rest[: len(_ENTRY)] != _ENTRY or rest[len(_ENTRY): len(_ENTRY) + 1] not in (":", "/"):
                continue
            try:
                digest = Digest.parse(rest[len(_ENTRY) + 1:].replace("-", ":", 1))
            except DigestError:
                continue
            entries[digest] = self._name(repo, subject, digest)
        return entries
