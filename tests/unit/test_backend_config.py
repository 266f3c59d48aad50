"""The ``backends:`` config shape and its validation."""
from __future__ import annotations

import pytest

from kraken.backend import NamespaceBackendConfig
from kraken.config import ConfigError, build


def test_builds_the_documented_shape() -> None:
    entries = build(list[NamespaceBackendConfig], [
        {"namespace": "library/.*", "backend": {"file": {"root": "/data", "name_path": "sharded_docker_blob"}}},
        {"namespace": ".*", "backend": {"testfs": {"addr": "localhost:14000", "name_path": "docker_tag"}}},
    ])
    assert entries[0].backend.kind == "file" and entries[0].backend.file.root == "/data"
    testfs = entries[1].backend.testfs
    assert (testfs.addr, testfs.root, testfs.name_path) == ("localhost:14000", "", "docker_tag")


@pytest.mark.parametrize("backend,message", [
    ({}, "exactly one of testfs, file must be set, got none"),
    ({"testfs": {"addr": "a:1"}, "file": {"root": "/x"}}, "got testfs, file"),
    ({"file": {"root": "/x", "name_path": "flat"}}, "name_path"),
    ({"s3": {"bucket": "b"}}, "unknown key"),
    ({"testfs": {}}, "addr: required key is missing"),
])
def test_invalid_backend_configs_fail_clearly(backend: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build(NamespaceBackendConfig, {"namespace": ".*", "backend": backend})


def test_invalid_namespace_regex_fails_at_load() -> None:
    with pytest.raises(ConfigError, match="not a valid regex"):
        build(NamespaceBackendConfig, {"namespace": "(unclosed", "backend": {"file": {"root": "/x"}}})
