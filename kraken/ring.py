"""Rendezvous (highest-random-weight) hashing of digests over a list of ``host:port`` strings.

Every host gets a score ``hash(host, digest)``; a digest's owners are the ``max_replica``
hosts with the highest scores. Any two processes configured with the same host list agree on
the owners without talking to each other, and adding or removing a host only moves the
digests that host wins or loses (about ``1/n`` of them), unlike ``hash mod n``.

Health: callers that find a host unreachable pass the hosts still believed alive to
:meth:`HashRing.set_healthy`; owners are then picked among those, so traffic for a dead
host's digests falls to the host that ranks next for each digest. When no host is healthy
the ring falls back to all hosts: a guess is better than refusing every request.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from kraken.core.digest import Digest


@dataclass
class RingConfig:
    """The hosts of a cluster (``host:port``) and how many of them own each digest."""

    hosts: list[str] = field(default_factory=list)
    max_replica: int = 1


def _score(host: str, digest: Digest) -> int:
    """A uniform 64-bit weight for (host, digest); blake2b is fast and well distributed."""
    h = hashlib.blake2b(f"{host}\x00{digest}".encode(), digest_size=8)
    return int.from_bytes(h.digest(), "big")


class HashRing:
    """Maps a digest to its owning hosts, best first."""

    def __init__(self, hosts: list[str], max_replica: int = 1) -> None:
        if max_replica < 1:
            raise ValueError(f"max_replica must be >= 1, got {max_replica}")
        self.hosts: tuple[str, ...] = tuple(dict.fromkeys(hosts))
        self.max_replica = max_replica
        self._healthy: tuple[str, ...] = self.hosts

    @classmethod
    def from_config(cls, config: RingConfig) -> HashRing:
        return cls(config.hosts, config.max_replica)

    def set_healthy(self, hosts: list[str] | set[str]) -> None:
        """Restrict owner selection to ``hosts`` (unknown names are ignored)."""
        alive = set(hosts)
        self._healthy = tuple(h for h in self.hosts if h in alive)

    def owners(self, digest: Digest) -> list[str]:
        """The ``min(max_replica, n)`` healthy hosts that own ``digest``, highest score first."""
        candidates = self._healthy or self.hosts
        ranked = sorted(candidates, key=lambda host: _score(host, digest), reverse=True)
        return ranked[: self.max_replica]
