"""The tracker's public, client-facing contract: what agents and the tracker must agree on.

Agents import this module, never the tracker's server internals (``kraken.tracker.server``,
``service``, ``slots``, ...), so the tracker's implementation can change without touching the
agent; tests/unit/test_boundaries.py enforces it. Only names that appear on the wire belong here.
"""
from __future__ import annotations

#: Response header of ``GET /namespace/<ns>/blobs/<digest>/metainfo``: the asking agent's swarm
#: slot, 0, 1, 2, ... (:mod:`kraken.tracker.slots` counts them; :mod:`kraken.p2p.shares` turns a
#: slot into the part of the blob the agent asks for first).
SLOT_HEADER = "Kraken-Swarm-Slot"
