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
from kraken.backend.config import kind_credentials
from kraken.config import ConfigError, Secret, build

#: The registered kinds as messages list them (other backends register more).
KINDS = ", ".join(BACKENDS.names())


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
    ({}, f"exactly one of {KINDS} must be set, got none"),
    ({"testfs": {"addr": "a:1"}, "file": {"root": "/x"}}, "got testfs, file"),
    ({"file": {"root": "/x", "name_path": "flat"}}, "name_path"),
    ({"nosuch": {"bucket": "b"}}, rf"backend\.nosuch: unknown backend 'nosuch' \(registered: {KINDS}\)"),
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
    with pytest.raises(ConfigError, match=rf"auth\.nosuch: unknown backend 'nosuch' \(registered: {KINDS}\)"):
        build(AuthHolder, {"auth": {"nosuch": {}}})


def test_auth_in_krakens_nested_shape_reaches_backends_flat() -> None:
    """Kraken's secrets nest a set's fields under the kind's name (``{s3: {user: {s3: {...}}}}``):
    both shapes load, and a backend sees plain ``field -> secret`` sets either way."""
    auth = build(AuthHolder, {"auth": {"file": {
        "kraken-style": {"file": {"token": "n3st3d"}},
        "plain": {"token": "fl4t"},
    }}}).auth
    assert "n3st3d" not in repr(auth)
    assert kind_credentials(auth, "file") == {"kraken-style": {"token": Secret("n3st3d")},
                                              "plain": {"token": Secret("fl4t")}}
    assert kind_credentials(auth, "testfs") == {}
    other = build(AuthHolder, {"auth": {"file": {"team": {"s3": {"token": "x"}}}}}).auth
    with pytest.raises(ConfigError, match=r"auth\.file\.team\.s3: expected a string \(a secret, not shown\); "
                                          r"only 'file' may hold a mapping"):
        kind_credentials(other, "file")
