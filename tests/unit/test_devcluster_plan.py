"""The devcluster's overlays keep the backends of the chosen config (``--config-dir``,
``--config-name``): only testfs addresses are pointed at the herd's testfs."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kraken.config import load_config
from kraken.devcluster import HerdPorts, herd_processes
from kraken.devcluster.params import CONFIG_ROOT
from kraken.origin.config import OriginConfig


def config_dir(tmp_path: Path, origin: dict[str, Any], build_index: dict[str, Any]) -> Path:
    """A config dir whose ``mine`` configs extend the checked-in development ones."""
    root = tmp_path / "config"
    for component, settings in (("origin", origin), ("build-index", build_index)):
        (root / component).mkdir(parents=True)
        extends = CONFIG_ROOT / component / "development.yaml"
        (root / component / "mine.yaml").write_text(yaml.safe_dump({"extends": str(extends), **settings}))
    for component in ("testfs", "tracker", "proxy"):
        (root / component).mkdir(parents=True)
        (root / component / "mine.yaml").write_text(
            yaml.safe_dump({"extends": str(CONFIG_ROOT / component / "development.yaml")}))
    return root


def overlays(tmp_path: Path, root: Path, config_name: str = "mine") -> dict[str, dict[str, Any]]:
    ports = HerdPorts(testfs=24000)
    procs = herd_processes(tmp_path / "dc", ports, config_name, config_dir=root)
    return {p.name: yaml.safe_load(p.config.read_text()) for p in procs if p.config is not None}


def test_backends_other_than_testfs_are_kept_as_configured(tmp_path: Path) -> None:
    blobs = {"namespace": "library/.*", "must_ready": True,
             "bandwidth": {"enable": True, "egress_bits_per_sec": 8000, "ingress_bits_per_sec": 8000},
             "backend": {"file": {"root": str(tmp_path / "blobs"), "name_path": "sharded_docker_blob"}}}
    rest = {"namespace": ".*", "backend": {"testfs": {"addr": "testfs.example:9", "root": "team",
                                                      "name_path": "sharded_docker_blob"}}}
    tags = {"namespace": ".*", "backend": {"file": {"root": str(tmp_path / "tags"), "name_path": "docker_tag"}}}
    root = config_dir(tmp_path, {"backends": [blobs, rest]}, {"backends": [tags]})
    written = overlays(tmp_path, root)

    # The origin's testfs entry now points at the herd's testfs; nothing else in it changed.
    assert written["origin"]["backends"] == [
        blobs, {**rest, "backend": {"testfs": {**rest["backend"]["testfs"], "addr": "127.0.0.1:24000"}}}]
    # No testfs entry at all: the overlay leaves build-index's backends to its config.
    assert "backends" not in written["build-index"]

    origin = load_config(OriginConfig, tmp_path / "dc" / "config" / "origin.yaml")  # as the origin loads it
    assert [(b.namespace, b.backend.kind, b.must_ready, b.bandwidth.enable) for b in origin.backends] == [
        ("library/.*", "file", True, True), (".*", "testfs", False, False)]


def test_the_development_configs_still_write_back_to_the_herds_testfs(tmp_path: Path) -> None:
    written = overlays(tmp_path, CONFIG_ROOT, "development").get
    assert written("origin")["backends"] == [{"namespace": ".*", "backend": {"testfs": {
        "addr": "127.0.0.1:24000", "name_path": "sharded_docker_blob"}}}]
    assert written("build-index")["backends"] == [{"namespace": ".*", "backend": {"testfs": {
        "addr": "127.0.0.1:24000", "name_path": "docker_tag"}}}]
