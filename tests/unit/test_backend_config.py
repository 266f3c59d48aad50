"""The ``backends:`` config shape and its validation."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kraken.backend import (
    BACKENDS,
    AuthConfig,
    Backend,
    BackendConfig,
    BackendContext,
    FileBackend,
    FileBackendConfig,
    NamespaceBackendConfig,
    create_backend,
)
from kraken.config import ConfigError, Secret, build


def test_builds_the_documented_shape() -> None:
    entries = build(list[NamespaceBackendConfig], [
        {"namespace": "library/.*", "backend": {"file": {"root": "/data", "name_path": "sharded_docker_blob"}}},
        {"namespace": ".*", "backend": {"testfs": {"addr": "localhost:14000", "name_path": "docker_tag"}}},
    ])
    assert entries[0].backend.kind == "file" and entries[0].backend.config.root == "/data"
    assert entries[1].backend.kind == "testfs"
    testfs = entries[1].backend.config
    assert (testfs.addr, testfs.root, testfs.name_path) == ("localhost:14000", "", "docker_tag")


@pytest.mark.parametrize("backend,message", [
    ({}, f"exactly one of {', '.join(BACKENDS.names())} must be set, got none"),
    ({"testfs": {"addr": "a:1"}, "file": {"root": "/x"}}, "got testfs, file"),
    ({"file": {"root": "/x", "name_path": "flat"}}, "name_path"),
    ({"nosuch": {"bucket": "b"}},
     rf"backend\.nosuch: unknown backend 'nosuch' \(registered: {', '.join(BACKENDS.names())}\)"),
    ({"testfs": {"addr": "a:1"}, "nosuch": {}}, "unknown backend 'nosuch'"),
    ("testfs", "expected a mapping"),
    ({"testfs": {}}, "addr: required key is missing"),
])
def test_invalid_backend_configs_fail_clearly(backend: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build(NamespaceBackendConfig, {"namespace": ".*", "backend": backend})


def test_invalid_namespace_regex_fails_at_load() -> None:
    with pytest.raises(ConfigError, match="not a valid regex"):
        build(NamespaceBackendConfig, {"namespace": "(unclosed", "backend": {"file": {"root": "/x"}}})



@dataclass
class ProbeConfig:
    root: str


@pytest.fixture
def probe_contexts() -> Iterator[list[BackendContext]]:
    """Registers a throwaway ``probe`` backend kind that records what its factory is given."""
    seen: list[BackendContext] = []

    def factory(config: ProbeConfig, context: BackendContext) -> Backend:
        seen.append(context)
        return FileBackend(FileBackendConfig(root=config.root))

    BACKENDS.register("probe", ProbeConfig, factory)
    yield seen
    BACKENDS.unregister("probe")


@dataclass
class AuthHolder:
    auth: AuthConfig = field(default_factory=dict)


async def test_a_registered_kind_is_parsed_and_built_through_the_registry(
    probe_contexts: list[BackendContext], tmp_path: Path,
) -> None:
    """A new backend is a config dataclass and a factory: one register call makes it usable,
    and it gets its own kind's credential sets, no other kind's."""
    entry = build(NamespaceBackendConfig, {"namespace": ".*", "backend": {"probe": {"root": str(tmp_path)}}})
    assert entry.backend == BackendConfig("probe", ProbeConfig(str(tmp_path)))
    auth = build(AuthHolder, {"auth": {
        "probe": {"default": {"token": "t0k"}},
        "file": {"other": {"token": "not-for-probe"}},
    }}).auth
    backend = create_backend(entry.backend, auth)
    await backend.close()
    assert probe_contexts == [BackendContext(credentials={"default": {"token": Secret("t0k")}})]


def test_an_unregistered_kind_is_refused_again() -> None:
    with pytest.raises(ConfigError, match="unknown backend 'probe'"):
        build(NamespaceBackendConfig, {"namespace": ".*", "backend": {"probe": {"root": "/x"}}})


def test_auth_names_registered_kinds_and_holds_secrets() -> None:
    auth = build(AuthHolder, {"auth": {"testfs": {"team-a": {"token": "s3cr3t"}}}}).auth
    assert auth == {"testfs": {"team-a": {"token": Secret("s3cr3t")}}}
    assert "s3cr3t" not in repr(auth)
    registered = ", ".join(BACKENDS.names())
    with pytest.raises(ConfigError, match=rf"auth\.nosuch: unknown backend 'nosuch' \(registered: {registered}\)"):
        build(AuthHolder, {"auth": {"nosuch": {}}})
