"""What a candidate routing policy would have done with recorded traffic, offline (no engine call).

Each recorded request goes through the router's own two decisions, as ``Router._route`` makes
them (:mod:`pipeline.router.logic`): the one definition of a valid request
(:func:`topics.rejections.parse_request` under the recorded prefix, done once by the join) and the
candidate's :meth:`RoutingPolicy.route` with the request record's timestamp as the time it was
received; an invalid or :class:`Unroutable` request is a dead letter. Nothing is produced: a
replay must not write decisions or dead letters, and skipping the router's record building keeps
the replay at the speed of reading (benchmarks/replay.py). The predicted tier is compared with
the tier the recorded policy chose (the decision's ``fallback_from`` when a breaker had diverted
it). Latency and cost of a request that stays on its tier are its own recorded ones; one that
moves gets the recorded distribution and mean cost of the tier it moves to (unknown when nothing
was recorded there). Memory is a few counters and one fixed-size histogram per tier
(:mod:`replay.histogram`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from replay.histogram import Histogram, bucket_of
from replay.join import Entry
from topics.catalogue import Tier
from topics.policy import Route, RoutingPolicy, Unroutable

DEAD = "dead_lettered"


@dataclass
class _TierStats:
    recorded: Histogram = field(default_factory=Histogram)
    recorded_cost: float = 0.0
    #: Requests predicted on this tier that were recorded on it too, with a reply.
    stayed: Histogram = field(default_factory=Histogram)
    stayed_cost: float = 0.0
    moved_in: int = 0
    moved_out: int = 0
    #: Predicted here, recorded on no tier or without a reply: nothing to predict their latency from.
    unpriced: int = 0


#: Distinct request shapes whose tier is remembered; past this the memo starts afresh (bounded memory).
MEMO_SIZE = 65_536


class _Row(NamedTuple):
    """What one row counts as; rows are tallied by it and every counter is derived at the end."""

    recorded: Tier | None
    predicted: Tier | None
    contradiction: bool
    detour: bool
    demoted: bool
    invalid: bool
    reply_tier: Tier | None


class WhatIf:
    """``what_if.add(entry)`` for every row; :meth:`summary` at the end."""

    def __init__(self, policy: RoutingPolicy) -> None:
        self.policy = policy
        #: One counter per kind of row (a few dozen at most): a row costs one increment, not ten.
        self._rows: Counter[tuple[Any, ...]] = Counter()
        self.tiers = {tier: _TierStats() for tier in Tier}
        #: tier inputs → (tier, contradiction?) or None (unroutable): recorded traffic repeats a few
        #: shapes (SLA, budget, size, tools), and the policy took a third of a replay's CPU.
        self._memo: dict[tuple[object, ...], tuple[Tier, bool] | None] = {}

    def predict(self, entry: Entry) -> Route | None:
        """The candidate's route for this recorded request; None: it would be dead-lettered."""
        if entry.request is None:  # invalid under the recorded prefix: the router rejects it first
            return None
        try:
            return self.policy.route(entry.request, received_ms=entry.received_ms)
        except Unroutable:
            return None

    def _decide(self, entry: Entry) -> tuple[Tier, bool] | None:
        """:meth:`predict`'s tier and whether it is a contradiction, once per request shape
        (:meth:`RoutingPolicy.tier_inputs`: the deadline, which the report does not use, is all
        that differs between requests of one shape)."""
        request = entry.request
        if request is None:
            return None
        key = self.policy.tier_inputs(request)
        try:
            return self._memo[key]
        except KeyError:
            pass
        route = self.predict(entry)
        decided = None if route is None else (route.tier, route.contradiction is not None)
        if len(self._memo) >= MEMO_SIZE:
            self._memo.clear()
        self._memo[key] = decided
        return decided

    def add(self, entry: Entry) -> Tier | None:
        """Count one row; returns the predicted tier (None: the candidate would dead-letter it)."""
        decided = self._decide(entry)
        tier, contradiction = decided if decided is not None else (None, False)
        decision, reply = entry.decision, entry.reply
        if decision is not None:
            fallback = decision.fallback_from
            recorded: Tier | None = fallback or decision.tier
            detour, demoted = fallback is not None, "demoted to" in decision.reason
        else:
            recorded = reply.tier if reply is not None else None
            detour = demoted = False
        reply_tier = None
        if reply is not None:
            reply_tier = reply.tier
            bucket, cost = bucket_of(reply.latency.total_ms), reply.cost_usd
            stats = self.tiers[reply_tier]
            stats.recorded.add_to(bucket)
            stats.recorded_cost += cost
            if tier is not None and recorded == tier == reply_tier:  # stays: its own reply prices it
                stats.stayed.add_to(bucket)
                stats.stayed_cost += cost
        # A plain tuple in _Row's order (NamedTuple's constructor is Python code); read as _Row later.
        invalid = entry.invalid is not None
        self._rows[(recorded, tier, contradiction, detour, demoted, invalid, reply_tier)] += 1
        return tier

    def _tally(self) -> None:
        """Move and price counts per tier, from the row kinds."""
        for key, n in self._rows.items():
            row = _Row(*key)
            if row.predicted is None:
                continue
            if row.recorded is not None and row.recorded != row.predicted:
                self.tiers[row.predicted].moved_in += n
                self.tiers[row.recorded].moved_out += n
            elif not (row.recorded == row.predicted and row.reply_tier == row.predicted):
                self.tiers[row.predicted].unpriced += n

    def summary(self) -> dict[str, Any]:
        for stats in self.tiers.values():
            stats.moved_in = stats.moved_out = stats.unpriced = 0
        self._tally()
        rows = {_Row(*key): n for key, n in self._rows.items()}
        recorded: Counter[str] = Counter()
        predicted: Counter[str] = Counter()
        moves: Counter[str] = Counter()
        for row, n in rows.items():
            was, now = _name(row.recorded), _name(row.predicted)
            recorded[was] += n
            predicted[now] += n
            if was != now:
                moves[f"{was}->{now}"] += n
        tiers: dict[str, Any] = {}
        for tier, stats in self.tiers.items():
            predicted_ms = Histogram()
            predicted_ms.merge(stats.stayed)
            cost: float | None = stats.stayed_cost
            if stats.moved_in:
                if stats.recorded.count:
                    predicted_ms.merge(stats.recorded, stats.moved_in / stats.recorded.count)
                    cost = stats.stayed_cost + stats.moved_in * stats.recorded_cost / stats.recorded.count
                else:
                    cost = None  # nothing recorded on this tier to price the newcomers with
            tiers[tier.value] = {
                "recorded_requests": recorded[tier.value],
                "predicted_requests": predicted[tier.value],
                "moved_in": stats.moved_in,
                "moved_out": stats.moved_out,
                "recorded_replies": int(stats.recorded.count),
                "recorded_p50_ms": stats.recorded.percentile(0.5),
                "recorded_p95_ms": stats.recorded.percentile(0.95),
                "predicted_p50_ms": predicted_ms.percentile(0.5),
                "predicted_p95_ms": predicted_ms.percentile(0.95),
                "recorded_cost_usd": round(stats.recorded_cost, 9),
                "predicted_cost_usd": None if cost is None else round(cost, 9),
            }
        return {
            "requests": sum(rows.values()),
            "invalid": sum(n for row, n in rows.items() if row.invalid),
            "moved": sum(n for move, n in moves.items() if DEAD not in move),
            "moves": dict(sorted(moves.items())),
            "newly_dead_lettered": sum(n for m, n in moves.items() if m.endswith(f"->{DEAD}")),
            "no_longer_dead_lettered": sum(n for m, n in moves.items() if m.startswith(f"{DEAD}->")),
            "dead_letters": {"recorded": recorded[DEAD], "predicted": predicted[DEAD]},
            "contradictions": {
                "recorded": sum(n for row, n in rows.items() if row.demoted),
                "predicted": sum(n for row, n in rows.items() if row.contradiction),
            },
            "recorded_detours": sum(n for row, n in rows.items() if row.detour),
            "unanswered": sum(n for row, n in rows.items() if row.recorded and row.reply_tier is None),
            "tiers": tiers,
        }


def _name(tier: Tier | None) -> str:
    return DEAD if tier is None else tier.value


def render_table(summary: dict[str, Any]) -> str:
    """The report for a terminal: headline counts, then one line per tier."""
    report = summary["report"]
    read = summary["read"]
    lines = [
        f"window {summary['window']['since']} → {summary['window']['until']}  "
        f"({read['events']} events, {read['method']}, {read['seconds']} s)",
        f"requests {report['requests']} (invalid {report['invalid']}), "
        f"would move {report['moved']}, dead letters {report['dead_letters']['recorded']} → "
        f"{report['dead_letters']['predicted']} (new {report['newly_dead_lettered']}, "
        f"rescued {report['no_longer_dead_lettered']}), contradictions "
        f"{report['contradictions']['recorded']} → {report['contradictions']['predicted']}",
    ]
    if report["moves"]:
        lines.append("moves: " + ", ".join(f"{m} {n}" for m, n in report["moves"].items()))
    header = (
        "tier",
        "recorded",
        "predicted",
        "in",
        "out",
        "p50 ms",
        "p95 ms",
        "pred p50",
        "pred p95",
        "cost $",
        "pred cost $",
    )
    rows = [header]
    for tier, t in report["tiers"].items():
        rows.append(
            (
                tier,
                t["recorded_requests"],
                t["predicted_requests"],
                t["moved_in"],
                t["moved_out"],
                _fmt(t["recorded_p50_ms"]),
                _fmt(t["recorded_p95_ms"]),
                _fmt(t["predicted_p50_ms"]),
                _fmt(t["predicted_p95_ms"]),
                _fmt(t["recorded_cost_usd"], 6),
                _fmt(t["predicted_cost_usd"], 6),
            )
        )
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    lines += ["  ".join(str(v).rjust(w) for v, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
