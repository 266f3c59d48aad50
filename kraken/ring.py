"""Rendezvous (highest-random-weight) hashing of digests over a list of ``host:port`` strings.

Every host gets a score ``hash(host, digest)``; a digest's owners are the ``max_replica``
hosts with the highest scores. Any two processes configured with the same host list agree on
the owners without talking to each other, and adding or removing a host only moves the
digests that host wins or loses (about ``1/n`` of them), unlike ``hash mod n``.

Health: the ring's clients check its hosts (:mod:`kraken.http.healthcheck`, configured by
:class:`HealthCheckConfig` and :class:`PassiveConfig` in the ring's section) and pass the hosts
believed alive to :meth:`HashRing.set_healthy`. A digest's healthy owners then serve it; only
when all of them are down does the healthy host that ranks next for the digest stand in. When
no host is healthy the ring falls back to all hosts: a guess is better than refusing every
request.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from kraken.config import Duration
from kraken.core.digest import Digest


@dataclass
class HealthCheckConfig:
    """Active checks (Kraken's healthcheck filter and monitor): every ``interval`` each host's
    ``GET /health`` must answer 200 within ``timeout``. A healthy host that fails ``fails``
    checks in a row leaves the healthy set; one out of it that passes ``passes`` in a row
    rejoins. ``interval: 0`` turns active checks off (failed requests still count)."""

    interval: Duration = 1.0
    timeout: Duration = 1.0
    fails: int = 3
    passes: int = 2

    def __post_init__(self) -> None:
        if self.interval < 0 or self.timeout <= 0 or self.fails < 1 or self.passes < 1:
            raise ValueError("health_check: interval must be >= 0, timeout > 0, fails and passes >= 1")


@dataclass
class PassiveConfig:
    """Passive checks (Kraken's passive filter): a host whose requests fail to connect or time
    out ``fails`` times within ``fail_timeout`` leaves the healthy set for ``fail_timeout``, or
    until active checks have seen it pass ``health_check.passes`` times since."""

    fails: int = 2
    fail_timeout: Duration = 5.0

    def __post_init__(self) -> None:
        if self.fails < 1 or self.fail_timeout <= 0:
            raise ValueError("passive: fails must be >= 1 and fail_timeout > 0")


@dataclass
class RingConfig:
    """The hosts of a cluster (``host:port``), how many of them own each digest, and how the
    ring's clients tell which hosts are healthy."""

    hosts: list[str] = field(default_factory=list)
    max_replica: int = 1
    health_check: HealthCheckConfig = field(default_factory=HealthCheckConfig)
    passive: PassiveConfig = field(default_factory=PassiveConfig)


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

    @property
    def healthy(self) -> tuple[str, ...]:
        return self._healthy

    def owners(self, digest: Digest) -> list[str]:
        """The healthy ones of the ``max_replica`` hosts that own ``digest``, highest score
        first (as Kraken's hashring locations): a dead owner's share is not handed to a host
        that does not own the digest while another owner is healthy. When every owner is
        unhealthy, the healthy host ranked next stands in; when no host is, the owners."""
        ranked = sorted(self.hosts, key=lambda host: _score(host, digest), reverse=True)
        replicas = ranked[: self.max_replica]
        alive = set(self._healthy)
        healthy = [h for h in replicas if h in alive]
        if healthy:
            return healthy
        return next(([h] for h in ranked if h in alive), replicas)

    def ranked(self, digest: Digest) -> list[str]:
        """Every host in the order a call for ``digest`` tries them: the healthy hosts by score
        (the owners first), then the others by score, last resorts."""
        alive = set(self._healthy)
        return sorted(self.hosts, key=lambda host: (host in alive, _score(host, digest)), reverse=True)
