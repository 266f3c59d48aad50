"""Check every process's config before the devcluster starts anything, and name the file the
user edited, not the generated overlay.

Each process's config is an overlay (under ``<workdir>/config/``; a scratch directory while a
start checks it) that ``extends:`` a checked-in file. A component that fails on it names the
overlay; here the same check (``kraken check-config``, in this process) runs first, and a
failing key is traced through the ``extends:`` chain to the file that sets it.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kraken.devcluster.supervise import Process


def extends_chain(path: Path) -> list[Path]:
    """``path`` and the files it ``extends``, most derived first (stops at an unreadable file)."""
    import yaml

    chain: list[Path] = []
    current: Path | None = path.resolve()
    while current is not None and current not in chain:
        chain.append(current)
        try:
            data = yaml.safe_load(current.read_text()) or {}
        except (OSError, yaml.YAMLError):
            break
        parent = data.get("extends") if isinstance(data, dict) else None
        current = (current.parent / parent).resolve() if isinstance(parent, str) else None
    return chain


def _has_key(data: Any, keypath: str) -> bool:
    """``data`` (plain YAML) has ``keypath`` (``a.b[0].c``, as config errors print it)."""
    for part in keypath.replace("[", ".[").split("."):
        if part.startswith("[") and part.endswith("]") and part[1:-1].isdigit():
            index = int(part[1:-1])
            if not isinstance(data, list) or index >= len(data):
                return False
            data = data[index]
        elif isinstance(data, dict) and part in data:
            data = data[part]
        else:
            return False
    return True


def key_source(chain: list[Path], keypath: str) -> Path | None:
    """The most derived file of ``chain`` that sets ``keypath``, or None when none does."""
    import yaml

    for path in chain:
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        if _has_key(data, keypath):
            return path
    return None


def explain(error: str, overlay: Path) -> str:
    """``error`` (a ConfigError's message naming ``overlay``) as the user's file and key.

    A key the overlay itself sets is the devcluster's (it is said so, without the overlay's
    path: a start checks overlays in a scratch directory); a key no file sets (a required one)
    is the user's file's to add.
    """
    overlay = overlay.resolve()
    prefix = f"{overlay}: "
    if not error.startswith(prefix):
        return error
    rest = error.removeprefix(prefix)
    keypath = rest.split(": ", 1)[0]
    chain = extends_chain(overlay)
    user_file = chain[1] if len(chain) > 1 else overlay
    source = key_source(chain, keypath) if keypath != "<top level>" else None
    if source == overlay:
        return f"{user_file}: {rest} (a value the devcluster itself sets)"
    return f"{source or user_file}: {rest}"


def check(procs: Sequence[Process]) -> list[str]:
    """One message per process whose config ``kraken <component>`` would refuse at start."""
    from kraken.cli import check_config_args

    problems = []
    for proc in procs:
        if proc.config is None:
            continue
        error = check_config_args(proc.command()[3:])
        if error is not None:
            problems.append(f"{proc.name}: {explain(error, proc.config)}")
    return problems
