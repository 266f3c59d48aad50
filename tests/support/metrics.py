"""Reading Prometheus text exposition (a component's ``/metrics``) in tests: one parser."""
from __future__ import annotations

import ssl
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def scrape(url: str, context: ssl.SSLContext | None = None) -> str:
    """The ``/metrics`` text of the component at ``url`` (over HTTPS with ``context``)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10, context=context) as resp:
        return resp.read().decode()


def metric(text: str, name: str, default: float | None = None, **labels: str) -> float:
    """The value of one sample; ``default`` if absent (a counter never incremented), else KeyError."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    if default is None:
        raise KeyError(f"{name} {labels} not in metrics")
    return default


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` that carry ``labels`` (0 when there are none): a
    counter across the label values not given (every status of a route, say)."""
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))
