"""name_path layouts: the exact object paths of the contract and their inverse."""
from __future__ import annotations

import pytest

from kraken.backend import InvalidName, ObjectLayout, get_name_path

HEX = "0123abcd" * 8


@pytest.mark.parametrize("kind,name,path", [
    ("identity", "dir/blob", "dir/blob"),
    ("identity", HEX, HEX),
    ("sharded_docker_blob", HEX, f"docker/registry/v2/blobs/sha256/01/{HEX}/data"),
    ("docker_tag", "test/x:v1", "docker/registry/v2/repositories/test/x/_manifests/tags/v1/current/link"),
    ("docker_tag", "alpine:3.19", "docker/registry/v2/repositories/alpine/_manifests/tags/3.19/current/link"),
])
def test_path_and_back(kind: str, name: str, path: str) -> None:
    layout = get_name_path(kind)
    assert layout.path(name) == path
    assert layout.name(path) == name


@pytest.mark.parametrize("kind,path", [
    ("sharded_docker_blob", f"docker/registry/v2/blobs/sha256/ff/{HEX}/data"),  # wrong shard
    ("sharded_docker_blob", f"docker/registry/v2/blobs/sha256/01/{HEX}/data/extra"),
    ("sharded_docker_blob", "elsewhere/data"),
    ("docker_tag", "docker/registry/v2/repositories/test/x/_manifests/tags/v1/index/sha256/ab/link"),
    ("docker_tag", f"docker/registry/v2/repositories/test/x/_layers/sha256/{HEX}/link"),
])
def test_foreign_paths_are_not_names(kind: str, path: str) -> None:
    assert get_name_path(kind).name(path) is None


def test_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown name_path"):
        get_name_path("flat")


def test_layout_root_prefix() -> None:
    layout = ObjectLayout("/tags/", "docker_tag")
    assert layout.path("r:t") == "tags/docker/registry/v2/repositories/r/_manifests/tags/t/current/link"
    assert layout.list_dir("r:") == "tags/docker/registry/v2/repositories/r/_manifests/tags"
    paths = [layout.path("r:t"), layout.path("r:u"), "tags/unrelated", "other/" + layout.path("r:v")]
    assert layout.names(paths, "r:") == ["r:t", "r:u"]


def test_layout_rejects_escaping_root() -> None:
    with pytest.raises(InvalidName):
        ObjectLayout("../up", "identity")
