"""A component start that fails part-way closes what it had opened (docs/CONTRACTS.md, "Assembly")."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from kraken.backend import (
    BACKENDS,
    Backend,
    BackendContext,
    NamespaceBackendConfig,
    TestfsBackend,
    TestfsBackendConfig,
    build_router,
)
from kraken.buildindex.config import BuildIndexConfig
from kraken.buildindex.server import BuildIndex
from kraken.config import build
from kraken.http.client import HttpClient
from kraken.metrics import Metrics
from kraken.origin import service as origin_service
from kraken.origin.config import OriginConfig
from kraken.origin.service import OriginService
from kraken.persisted import PersistedQueue


@dataclass
class BrokenConfig:
    reason: str = "cannot be built"


@pytest.fixture
def built() -> Iterator[list[TestfsBackend]]:
    """Registers ``spy`` (a testfs backend, recorded) and ``broken`` (whose factory raises)."""
    backends: list[TestfsBackend] = []

    def spy(config: TestfsBackendConfig, context: BackendContext) -> Backend:
        backends.append(TestfsBackend(config, context.http_client))
        return backends[-1]

    def broken(config: BrokenConfig, context: BackendContext) -> Backend:
        raise RuntimeError(config.reason)

    BACKENDS.register("spy", TestfsBackendConfig, spy)
    BACKENDS.register("broken", BrokenConfig, broken)
    yield backends
    BACKENDS.unregister("spy")
    BACKENDS.unregister("broken")


def backends(*kinds: str) -> list[dict[str, Any]]:
    sections = {"spy": {"addr": "127.0.0.1:9"}, "broken": {}}
    return [{"namespace": f"ns{i}/.*", "backend": {kind: sections[kind]}} for i, kind in enumerate(kinds)]


async def test_a_router_closes_the_backends_it_built_when_a_later_one_fails(built: list[TestfsBackend]) -> None:
    with pytest.raises(RuntimeError, match="cannot be built"):
        await build_router(build(list[NamespaceBackendConfig], backends("spy", "spy", "broken")))
    assert len(built) == 2 and all(b.http.session.closed for b in built)


async def test_build_index_with_a_broken_second_backend_closes_the_first(
    built: list[TestfsBackend], tmp_path: Path,
) -> None:
    config = build(BuildIndexConfig, {"backends": backends("spy", "broken"), "store": {"root": str(tmp_path)},
                                      "origins": {"hosts": ["127.0.0.1:9"]}})
    server = BuildIndex(config, Metrics("build-index"))
    with pytest.raises(RuntimeError, match="cannot be built"):
        await anext(server.lifecycle(web.Application()))
    assert len(built) == 1 and built[0].http.session.closed
    with pytest.raises(RuntimeError, match="build-index not started"):
        _ = server.store


async def test_an_origin_whose_p2p_session_fails_closes_what_it_opened(
    built: list[TestfsBackend], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The P2P session starts last but one: by then the store, both queues, the backends and
    the client are open, and all of them are closed again."""
    clients: list[HttpClient] = []
    closed_queues: list[PersistedQueue] = []
    create_client, close_queue = origin_service.create_client, PersistedQueue.close

    def recording_client(*args: Any) -> HttpClient:
        clients.append(create_client(*args))
        return clients[-1]

    async def recording_close(queue: PersistedQueue) -> None:
        closed_queues.append(queue)
        await close_queue(queue)

    async def no_session(*args: Any, **kwargs: Any) -> None:
        raise OSError("address in use")

    monkeypatch.setattr(origin_service, "create_client", recording_client)
    monkeypatch.setattr(PersistedQueue, "close", recording_close)
    monkeypatch.setattr(origin_service.P2PSession, "start", no_session)
    config = build(OriginConfig, {"backends": backends("spy"), "store": {"root": str(tmp_path)},
                                  "advertise": "127.0.0.1:1"})
    service = OriginService(config, Metrics("origin"))
    with pytest.raises(OSError, match="address in use"):
        await anext(service.lifecycle(web.Application()))
    assert len(built) == 1 and built[0].http.session.closed
    assert len(clients) == 1 and clients[0].session.closed
    assert len(closed_queues) == 2
    assert service.p2p is None
    with pytest.raises(RuntimeError, match="origin not started"):
        _ = service.store
