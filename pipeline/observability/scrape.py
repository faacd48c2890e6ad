"""Read the processes' real ``/metrics`` (what Prometheus would scrape): for validate and ``npcflow top``.

The Prometheus text format is parsed with prometheus-client's own parser, so what these tools
show is exactly what a Prometheus server would store.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


@dataclass
class Scrape:
    """Every sample from every target, and which targets did not answer (with why)."""

    samples: list[Sample] = field(default_factory=list)
    #: Family names as exposed (counters as ``*_total``).
    families: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)

    def total(self, name: str, **labels: str) -> float:
        """Sum of the samples named ``name`` whose labels include ``labels`` (over every process)."""
        return sum(
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def values(self, name: str, label: str) -> dict[str, float]:
        """``name`` summed per value of ``label``."""
        out: dict[str, float] = {}
        for s in self.samples:
            if s.name == name and label in s.labels:
                out[s.labels[label]] = out.get(s.labels[label], 0.0) + s.value
        return out

    def quantile(self, histogram: str, q: float, **labels: str) -> float | None:
        """The ``q`` quantile of a histogram summed over processes, as Prometheus'
        ``histogram_quantile`` estimates it (linear within the bucket); None with no observations."""
        buckets: dict[float, float] = {}
        for s in self.samples:
            if s.name != f"{histogram}_bucket" or not all(s.labels.get(k) == v for k, v in labels.items()):
                continue
            le = float(s.labels["le"])
            buckets[le] = buckets.get(le, 0.0) + s.value
        if not buckets:
            return None
        bounds = sorted(buckets)
        count = buckets[bounds[-1]]
        if count <= 0:
            return None
        rank = q * count
        lower, below = 0.0, 0.0
        for upper in bounds:
            cumulative = buckets[upper]
            if cumulative >= rank:
                if upper == float("inf"):
                    return lower
                share = (rank - below) / (cumulative - below) if cumulative > below else 1.0
                return lower + (upper - lower) * share
            lower, below = upper, cumulative
        return lower


def _url(target: str) -> str:
    target = target if "://" in target else f"http://{target}"
    return target if target.rstrip("/").endswith("/metrics") else target.rstrip("/") + "/metrics"


def scrape(targets: Iterable[str], timeout_s: float = 3.0) -> Scrape:
    """GET ``/metrics`` of each ``host:port`` (or URL); a target that fails is named, not fatal."""
    result = Scrape()
    for target in targets:
        try:
            with urllib.request.urlopen(_url(target), timeout=timeout_s) as response:
                text = response.read().decode()
        except OSError as exc:
            result.failed[target] = str(getattr(exc, "reason", exc))
            continue
        for family in text_string_to_metric_families(text):
            # The text format's ``*_created`` timestamps parse as families of their own: not ours.
            if family.name.startswith("npcflow_") and not family.name.endswith("_created"):
                result.families.add(f"{family.name}_total" if family.type == "counter" else family.name)
            result.samples.extend(s for s in family.samples if s.name.startswith("npcflow_"))
    return result
