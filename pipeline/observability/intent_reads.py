"""What near-cache reads saw: model intent or default, and how old, exported without a lock per read.

A game loop calls ``IntentCache.get_intent`` for every active NPC every frame (12,000 reads a
second for 200 NPCs at 60 Hz), and a read must stay a dictionary lookup of a few microseconds. A
prometheus-client counter or histogram takes a lock on every update; :class:`ReadStats` instead
keeps plain integers that only the reading thread writes, and one collector turns every live
cache's numbers into the families below when Prometheus scrapes (docs/architecture.md,
"Keeping the active set fresh"):

- ``npcflow_intent_reads_total{cache,source}``: reads answered by a ``model`` intent, a ``game``
  intent (``update_intent``) or the archetype's ``default`` — the share of model reads is Gold's
  freshness promise as the game sees it;
- ``npcflow_intent_read_age_seconds{cache}``: the age of the intent each non-default read returned.
"""

from __future__ import annotations

import bisect
import weakref
from collections.abc import Iterator

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

#: Upper bounds of the age histogram, in milliseconds (exported in seconds).
AGE_BUCKETS_MS = (50, 100, 250, 500, 750, 1000, 2000, 5000, 10_000, 30_000)
SOURCES = ("model", "game", "default")


class ReadStats:
    """Counters of one near cache's reads; updated only by whoever reads (one game thread, one loop)."""

    def __init__(self, cache: str) -> None:
        self.cache = cache
        self.model = 0
        self.game = 0
        self.default = 0
        #: Non-default reads per age bucket (the last one: older than every bound).
        self.age_counts = [0] * (len(AGE_BUCKETS_MS) + 1)
        self.age_sum_ms = 0.0
        _LIVE.add(self)

    def intent(self, age_ms: float, from_game: bool) -> None:
        if from_game:
            self.game += 1
        else:
            self.model += 1
        self.age_counts[bisect.bisect_left(AGE_BUCKETS_MS, age_ms)] += 1
        self.age_sum_ms += age_ms

    def fell_back(self) -> None:
        self.default += 1

    @property
    def reads(self) -> int:
        return self.model + self.game + self.default

    def model_share(self) -> float | None:
        """Share of reads answered by a model intent (None before the first read)."""
        return self.model / self.reads if self.reads else None


_LIVE: weakref.WeakSet[ReadStats] = weakref.WeakSet()


class _ReadsCollector:
    """Sums the live caches' stats per cache name at scrape time."""

    def collect(self) -> Iterator[Metric]:
        reads = CounterMetricFamily(
            "npcflow_intent_reads",
            "Near-cache intent reads by what answered: model intent, game intent (update_intent) or default",
            labels=["cache", "source"],
        )
        ages = HistogramMetricFamily(
            "npcflow_intent_read_age_seconds",
            "Age of the intent a near-cache read returned (default answers excluded)",
            labels=["cache"],
        )
        by_cache: dict[str, list[ReadStats]] = {}
        for stats in list(_LIVE):
            by_cache.setdefault(stats.cache, []).append(stats)
        for cache, group in sorted(by_cache.items()):
            for source in SOURCES:
                reads.add_metric([cache, source], sum(getattr(s, source) for s in group))
            counts = [sum(s.age_counts[i] for s in group) for i in range(len(AGE_BUCKETS_MS) + 1)]
            cumulative, buckets = 0, []
            for bound, count in zip((*AGE_BUCKETS_MS, float("inf")), counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else f"{bound / 1000:g}", cumulative))
            ages.add_metric([cache], buckets, sum(s.age_sum_ms for s in group) / 1000)
        yield reads
        yield ages


REGISTRY.register(_ReadsCollector())  # type: ignore[arg-type]
