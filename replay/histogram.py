"""Latency percentiles in fixed memory: log-spaced buckets, 5 % wide, merged with weights.

A replay of a day holds millions of latencies; the report needs p50/p95 per tier, and a mix of
distributions (a tier's own requests plus those a new policy would move there), so counts per
bucket (at most a few hundred buckets) are kept instead of the values.
"""

from __future__ import annotations

import math
from collections import defaultdict

_GROWTH = math.log(1.05)


def bucket_of(value_ms: float) -> int:
    return int(math.log1p(value_ms if value_ms > 0.0 else 0.0) / _GROWTH)


class Histogram:
    def __init__(self) -> None:
        self.buckets: defaultdict[int, float] = defaultdict(float)
        self.count = 0.0

    def add(self, value_ms: float, weight: float = 1.0) -> None:
        self.add_to(bucket_of(value_ms), weight)

    def add_to(self, bucket: int, weight: float = 1.0) -> None:
        """Count a value already put in its bucket (:func:`bucket_of`, once for several histograms)."""
        self.buckets[bucket] += weight
        self.count += weight

    def merge(self, other: Histogram, weight: float = 1.0) -> None:
        """Add ``other``'s counts times ``weight`` (a distribution standing for weight times its count)."""
        for bucket, count in other.buckets.items():
            self.buckets[bucket] += count * weight
        self.count += other.count * weight

    def percentile(self, q: float) -> float | None:
        """The value below which a fraction ``q`` of the weight lies (bucket middle, ±2.5 %)."""
        if self.count <= 0:
            return None
        target = q * self.count
        seen = 0.0
        for bucket in sorted(self.buckets):
            seen += self.buckets[bucket]
            if seen >= target - 1e-9:
                return round(math.expm1((bucket + 0.5) * _GROWTH), 1)
        return round(math.expm1((max(self.buckets) + 0.5) * _GROWTH), 1)
