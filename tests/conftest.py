"""The suite's configuration: shared fixtures, assertion rewriting, the realclients marker.

Layout: tests/unit (in-process, fast: ``make unit-test``), tests/component (one
Kraken process or app over real sockets), tests/cluster (several Kraken processes, P2P),
tests/realclients (docker, skopeo, podman, containerd, the devcluster's Docker mode, multi-host),
and tests/support (helpers and fixtures; test modules never import each other).
"""
from __future__ import annotations

from pathlib import Path

import pytest

# Support modules assert (on bytes, digests, deadlines): have pytest rewrite them for readable
# failures (this must happen before their first import, so before the plugins below).
pytest.register_assert_rewrite("tests.support")

# Fixtures shared by the suite: registered here so test modules use them without importing them.
pytest_plugins = ["tests.support.fixtures", "tests.support.clientfixtures", "tests.support.kraken_images"]

REALCLIENTS = Path(__file__).parent / "realclients"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/realclients/ is marked ``realclients`` (``-m "not realclients"``
    leaves it out), besides the tests elsewhere that carry the mark themselves."""
    for item in items:
        if REALCLIENTS in item.path.parents:
            item.add_marker(pytest.mark.realclients)
