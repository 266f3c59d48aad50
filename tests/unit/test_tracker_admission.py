"""Which announces need a client certificate (kraken.tracker.admission)."""
from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import generate_latest

from kraken.config import ConfigError, load_config
from kraken.metrics import Metrics
from kraken.tracker.admission import ANNOUNCE_REFUSED, SEEDING_REFUSED, STOP_REFUSED, AnnounceAdmission
from kraken.tracker.announce import AnnounceRequest
from kraken.tracker.config import CertificateRule, TrackerConfig
from kraken.tracker.metrics import TrackerMetrics
from tests.support.metrics import metric


class Connection:
    """What the check asks of a request: its verified client certificate, if any."""

    remote = "10.0.0.1"

    def __init__(self, certified: bool) -> None:
        self.peercert = {"subject": ((("commonName", "agent-1"),),)} if certified else None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peercert if name == "peercert" else default


def announce(left: int, event: str = "", port: int = 6881) -> AnnounceRequest:
    return AnnounceRequest(b"i" * 20, b"p" * 20, port, left, event, None, None)


def check(admission: AnnounceAdmission, certified: bool, request: AnnounceRequest, ip: str = "10.0.0.1") -> str | None:
    return admission.refusal(Connection(certified), request, ip)  # type: ignore[arg-type]


@pytest.mark.parametrize(("rule", "seeder", "leecher"), [
    ("seeders", SEEDING_REFUSED, None), ("all", SEEDING_REFUSED, ANNOUNCE_REFUSED), ("none", None, None),
])
def test_the_rule_decides_what_needs_a_certificate(rule: CertificateRule, seeder: str | None,
                                                   leecher: str | None) -> None:
    admission = AnnounceAdmission(rule, True, TrackerMetrics(Metrics("t")))
    assert check(admission, False, announce(0)) == seeder
    assert check(admission, False, announce(5)) == leecher
    assert check(admission, False, announce(0, "stopped")) is None  # only removes the caller's address
    # Another address (trust_ip_param with ip=): an uncertified caller must not remove a seeder.
    stop_refused = None if rule == "none" else STOP_REFUSED
    assert check(admission, False, announce(0, "stopped"), ip="10.0.0.2") == stop_refused
    assert check(admission, False, announce(5, "stopped"), ip="10.0.0.2") == stop_refused
    assert check(admission, True, announce(0, "stopped"), ip="10.0.0.2") is None
    assert check(admission, True, announce(0)) is None
    assert check(admission, True, announce(5)) is None


def test_nothing_is_checked_when_the_tracker_verifies_no_certificates() -> None:
    metrics = Metrics("t")
    admission = AnnounceAdmission("all", False, TrackerMetrics(metrics))
    assert check(admission, False, announce(0)) is None
    text = generate_latest(metrics.registry).decode()
    assert metric(text, "kraken_tracker_announce_certificates_total", 0, certificate="none") == 0


def test_refusals_are_counted_and_logged_once_per_peer(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics("t")
    admission = AnnounceAdmission("seeders", True, TrackerMetrics(metrics))
    for _ in range(3):
        check(admission, False, announce(0))
    check(admission, False, announce(0, port=6882))
    check(admission, True, announce(0))
    text = generate_latest(metrics.registry).decode()
    assert metric(text, "kraken_tracker_announce_failures_total", 0, reason="no_certificate") == 4
    assert metric(text, "kraken_tracker_announce_certificates_total", 0, certificate="none") == 4
    assert metric(text, "kraken_tracker_announce_certificates_total", 0, certificate="verified") == 1
    lines = [r for r in caplog.records if "announce refused" in r.getMessage()]
    assert len(lines) == 2


def test_all_without_mtls_on_the_tracker_is_a_config_error() -> None:
    """It would otherwise take every announce while the operator believes it takes none."""
    with pytest.raises(ConfigError, match="announce_requires_certificate: all needs mTLS"):
        load_config(TrackerConfig, None, overrides={"announce_requires_certificate": "all"})
    assert load_config(TrackerConfig, None, overrides={}).announce_requires_certificate == "seeders"
