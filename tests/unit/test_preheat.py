"""Preheat's request parsing and job bounds, in process (the herd test is tests/cluster/test_preheat.py)."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kraken.config import ConfigError
from kraken.core.digest import Digest
from kraken.http.errors import JsonError
from kraken.metrics import Metrics
from kraken.origin.client import BlobNotFound
from kraken.proxy.config import PreheatServerConfig
from kraken.proxy.preheat_jobs import JobsFull, JobState, PreheatJobs
from kraken.proxy.preheat_server import parse_prefetch_tag, push_events
from kraken.registry.manifest import DOCKER_MANIFEST, OCI_INDEX
from tests.support.waiting import until

D1 = Digest.of_bytes(b"one")
D2 = Digest.of_bytes(b"two")


def event(action: str = "push", media_type: str = DOCKER_MANIFEST, **target: Any) -> dict[str, Any]:
    return {"action": action, "target": {"mediaType": media_type, "digest": str(D1), "repository": "a/b",
                                         "tag": "v1", **target}}


def test_push_events_keeps_manifest_pushes_and_ignores_the_rest() -> None:
    body = {"events": [
        event(),
        event(media_type=f"{OCI_INDEX}; charset=utf-8", digest=str(D2), tag=""),
        event(action="pull"),
        event(media_type="application/octet-stream"),
        event(action="delete"),
    ]}
    assert push_events(body) == ([("a/b", D1, "v1"), ("a/b", D2, "")], 3)


def test_push_events_reads_keys_in_any_case() -> None:
    body = {"Events": [{"Action": "push", "Target": {"MediaType": DOCKER_MANIFEST, "Digest": str(D1),
                                                     "Repository": "lib/x", "Tag": "t", "Url": "u"}}]}
    assert push_events(body) == ([("lib/x", D1, "t")], 0)


@pytest.mark.parametrize(("body", "fragment"), [
    ({}, '"events"'),
    ({"events": {}}, '"events"'),
    ({"events": [3]}, "events[0] is not an object"),
    ({"events": [{"action": "push", "target": "x"}]}, "target"),
    ({"events": [event(digest="md5:abc")]}, "digest"),
    ({"events": [event(repository="UPPER/case")]}, "repository"),
    ({"events": [event(repository=7)]}, "repository"),
    ({"events": [event(tag="bad tag")]}, "tag"),
])
def test_push_events_refuses_what_is_not_an_envelope(body: dict[str, Any], fragment: str) -> None:
    with pytest.raises(JsonError) as e:
        push_events(body)
    assert e.value.status == 400 and fragment in str(e.value)


def test_parse_prefetch_tag() -> None:
    assert parse_prefetch_tag("registry:5000/ns/name:tag", "") == ("ns/name", "tag")
    assert parse_prefetch_tag("h/name:t", "") == ("name", "t")
    for bad in ("name:tag", "h/name", "h/Bad:tag", "/ns/name:tag", "h/ns/name:bad tag"):
        with pytest.raises(JsonError) as e:
            parse_prefetch_tag(bad, "trace")
        assert e.value.status == 400 and e.value.extra["trace_id"] == "trace"


def test_config_checks_its_bounds() -> None:
    with pytest.raises(ConfigError):
        PreheatServerConfig(max_jobs=0)
    with pytest.raises(ValueError):
        PreheatServerConfig(allowed_cidrs=["not-a-network"])


class _Origins:
    """Manifest reads that wait for ``release``, then find nothing."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def open(self, repo: str, digest: Digest) -> Any:
        await self.release.wait()
        raise BlobNotFound(f"{repo}@{digest}")


async def test_jobs_are_shared_bounded_and_fail_with_a_reason() -> None:
    origins = _Origins()
    config = PreheatServerConfig(max_jobs=2, max_running_jobs=1, manifest_wait=0)
    jobs = PreheatJobs(config, Metrics("test"), lambda: origins, lambda: None, 1 << 20, 10)
    try:
        first = jobs.submit("a/b", D1, "v1", "notification")
        assert jobs.submit("a/b", D1, "v1", "prefetch") is first  # still unfinished: the same job
        second = jobs.submit("a/b", D2, "", "notification")
        await until(lambda: first.state == JobState.RUNNING, what="the first job running")
        assert second.state == JobState.QUEUED  # max_running_jobs = 1
        with pytest.raises(JobsFull):
            jobs.submit("c/d", D1, "", "notification")
        origins.release.set()
        await until(lambda: second.state == JobState.FAILED, what="both jobs finished")
        assert first.state == JobState.FAILED and "is not in a/b" in first.errors[0]
        third = jobs.submit("c/d", D1, "", "notification")  # room again: the oldest finished is forgotten
        assert jobs.get(first.id) is None and jobs.get(third.id) is third
        assert jobs.count(JobState.FAILED) == 1
    finally:
        await jobs.close()
