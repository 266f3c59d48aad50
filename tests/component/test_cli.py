"""The ``kraken`` command itself: ``--version`` and ``check-config``, which loads a config as the
component would at start and starts nothing."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kraken import cli

ROOT = Path(__file__).resolve().parents[2]


def test_version_is_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"kraken {cli.version()}"
    assert cli.version() == "0.1.0" or cli.version().startswith("unknown")


@pytest.mark.parametrize("component", list(cli.COMPONENTS))
def test_check_config_accepts_the_checked_in_configs(component: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check-config", component, "--config", str(ROOT / "config" / component / "development.yaml")]) == 0
    assert capsys.readouterr().out.strip() == f"kraken check-config {component}: OK"


def test_check_config_names_the_file_and_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "origin.yaml"
    config.write_text(f"extends: {ROOT / 'config' / 'origin' / 'development.yaml'}\ncleanup:\n  tti: forever\n")
    assert cli.main(["check-config", "origin", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kraken check-config origin: config error: {config}: cleanup.tti: "), err


def test_check_config_applies_the_components_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    agent = str(ROOT / "config" / "agent" / "development.yaml")
    assert cli.main(["check-config", "agent", "--config", agent, "--port", "18000", "--server-port", "18002"]) == 0
    config = cli.component_config(cli.build_parser("agent").parse_args(
        ["agent", "--config", agent, "--port", "18000", "--server-port", "18002"]))
    assert (config.listen.port, config.server.port) == (18000, 18002)


def test_check_config_needs_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check-config", "proxy"]) == 2
    assert "--config FILE is required" in capsys.readouterr().err
    assert cli.main(["check-config", "proxy", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_check_config_starts_nothing(tmp_path: Path) -> None:
    """As a command: exit status 0 or 2 (a config error), and it returns at once (a component would keep running)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    ok = subprocess.run([sys.executable, "-m", "kraken", "check-config", "tracker", "--config",
                         str(ROOT / "config" / "tracker" / "development.yaml"), "--port", "1"],
                        env=env, capture_output=True, text=True, timeout=60, check=False)
    assert (ok.returncode, ok.stdout.strip()) == (0, "kraken check-config tracker: OK"), ok.stderr
    bad = tmp_path / "tracker.yaml"
    bad.write_text("listen:\n  port: many\n")
    r = subprocess.run([sys.executable, "-m", "kraken", "check-config", "tracker", "--config", str(bad)],
                       env=env, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2 and f"{bad}: listen.port:" in r.stderr, r.stderr
