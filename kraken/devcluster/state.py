"""What the devcluster keeps between commands (``<workdir>/devcluster.json``: the mode, the
supervisor's PID, its children and their probes) and how it talks to the user.

Standard library only: ``make devcluster-stop`` runs with any python3.
"""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from kraken.devcluster.params import DEFAULT_WORKDIR
from kraken.devcluster.procfs import cmdline, pid_alive

STATE_FILE = "devcluster.json"


def out(msg: str = "", file: TextIO | None = None) -> None:
    """Print and flush; a terminal that went away (SIGHUP, closed pipe) must not stop a shutdown."""
    with contextlib.suppress(OSError, ValueError):
        print(msg, file=file or sys.stdout, flush=True)


def err(msg: str) -> None:
    out(msg, sys.stderr)


def state_path(workdir: Path) -> Path:
    return workdir / STATE_FILE


def read_state(workdir: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(state_path(workdir).read_text())
    except (OSError, ValueError):
        return None
    return state


def write_state(workdir: Path, state: dict[str, Any]) -> None:
    tmp = state_path(workdir).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(state_path(workdir))


def is_our_supervisor(pid: int) -> bool:
    return pid_alive(pid) and "kraken.devcluster" in cmdline(pid)


def is_our_child(pid: int, workdir: Path) -> bool:
    cmd = cmdline(pid)
    return pid_alive(pid) and " -m kraken " in f" {cmd} " and str(workdir / "config") in cmd


def stop_hint(workdir: Path) -> str:
    """The command that stops the native devcluster of ``workdir``."""
    arg = "" if workdir == DEFAULT_WORKDIR else f" DEVCLUSTER_DIR={workdir}"
    return f"`make devcluster-stop{arg}` (or: python -m kraken.devcluster stop --workdir {workdir})"
