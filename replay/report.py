"""What a candidate routing policy would have done with recorded traffic, offline (no engine call).

Each recorded request goes through the router's own two decisions, as ``Router._route`` makes
them (:mod:`pipeline.router.logic`): the one definition of a valid request
(:func:`topics.schemas.parse_request` under the recorded prefix, done once by the join) and the
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
from typing import Any

from pipeline.router.policy import Route, RoutingPolicy, Unroutable
from replay.histogram import Histogram
from replay.join import Entry
from topics.catalogue import Tier

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


class WhatIf:
    """``await what_if.add(entry)`` for every row; :meth:`summary` at the end."""

    def __init__(self, policy: RoutingPolicy) -> None:
        self.policy = policy
        self.requests = 0
        self.invalid = 0
        self.recorded: Counter[str] = Counter()
        self.predicted: Counter[str] = Counter()
        self.moves: Counter[str] = Counter()
        self.contradictions = {"recorded": 0, "predicted": 0}
        self.detours = 0
        self.unanswered = 0
        self.tiers = {tier: _TierStats() for tier in Tier}
        #: tier inputs → (tier, contradiction?) or None (unroutable): recorded traffic repeats a few
        #: shapes (SLA, budget, size, tools), and the policy took a third of a replay's CPU.
        self._memo: dict[tuple[object, ...], tuple[Tier, bool] | None] = {}
        self._names = {tier: tier.value for tier in Tier} | {None: DEAD}
        self._move_names: dict[tuple[Tier | None, Tier | None], str] = {}

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
        tier = decided[0] if decided is not None else None
        names = self._names
        self.requests += 1
        self.invalid += entry.invalid is not None
        decision = entry.decision
        reply = entry.reply
        if decision is not None:
            recorded: Tier | None = decision.fallback_from or decision.tier
            self.detours += decision.fallback_from is not None
            self.contradictions["recorded"] += "demoted to" in decision.reason
        else:
            recorded = reply.tier if reply is not None else None
        self.recorded[names[recorded]] += 1
        self.predicted[names[tier]] += 1
        if decided is not None and decided[1]:
            self.contradictions["predicted"] += 1
        if recorded != tier:
            move = self._move_names.get((recorded, tier))
            if move is None:
                move = self._move_names[recorded, tier] = f"{names[recorded]}->{names[tier]}"
            self.moves[move] += 1
        if reply is None:
            self.unanswered += recorded is not None
        else:
            stats = self.tiers[reply.tier]
            stats.recorded.add(reply.latency.total_ms)
            stats.recorded_cost += reply.cost_usd
        if tier is None:
            return None
        stats = self.tiers[tier]
        if recorded == tier and reply is not None and reply.tier == tier:
            stats.stayed.add(reply.latency.total_ms)
            stats.stayed_cost += reply.cost_usd
        elif recorded is not None and recorded != tier:
            stats.moved_in += 1
            self.tiers[recorded].moved_out += 1
        else:
            stats.unpriced += 1
        return tier

    @property
    def moved(self) -> int:
        """Requests routed in both that the candidate sends to another tier."""
        return sum(n for move, n in self.moves.items() if DEAD not in move)

    def summary(self) -> dict[str, Any]:
        tiers: dict[str, Any] = {}
        for tier, stats in self.tiers.items():
            predicted = Histogram()
            predicted.merge(stats.stayed)
            cost: float | None = stats.stayed_cost
            if stats.moved_in:
                if stats.recorded.count:
                    predicted.merge(stats.recorded, stats.moved_in / stats.recorded.count)
                    cost = stats.stayed_cost + stats.moved_in * stats.recorded_cost / stats.recorded.count
                else:
                    cost = None  # nothing recorded on this tier to price the newcomers with
            tiers[tier.value] = {
                "recorded_requests": self.recorded[tier.value],
                "predicted_requests": self.predicted[tier.value],
                "moved_in": stats.moved_in,
                "moved_out": stats.moved_out,
                "recorded_replies": int(stats.recorded.count),
                "recorded_p50_ms": stats.recorded.percentile(0.5),
                "recorded_p95_ms": stats.recorded.percentile(0.95),
                "predicted_p50_ms": predicted.percentile(0.5),
                "predicted_p95_ms": predicted.percentile(0.95),
                "recorded_cost_usd": round(stats.recorded_cost, 9),
                "predicted_cost_usd": None if cost is None else round(cost, 9),
            }
        return {
            "requests": self.requests,
            "invalid": self.invalid,
            "moved": self.moved,
            "moves": dict(sorted(self.moves.items())),
            "newly_dead_lettered": sum(n for m, n in self.moves.items() if m.endswith(f"->{DEAD}")),
            "no_longer_dead_lettered": sum(n for m, n in self.moves.items() if m.startswith(f"{DEAD}->")),
            "dead_letters": {"recorded": self.recorded[DEAD], "predicted": self.predicted[DEAD]},
            "contradictions": dict(self.contradictions),
            "recorded_detours": self.detours,
            "unanswered": self.unanswered,
            "tiers": tiers,
        }


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
    header = ("tier", "recorded", "predicted", "in", "out", "p50 ms", "p95 ms", "pred p50", "pred p95",
              "cost $", "pred cost $")
    rows = [header]
    for tier, t in report["tiers"].items():
        rows.append((
            tier, t["recorded_requests"], t["predicted_requests"], t["moved_in"], t["moved_out"],
            _fmt(t["recorded_p50_ms"]), _fmt(t["recorded_p95_ms"]), _fmt(t["predicted_p50_ms"]),
            _fmt(t["predicted_p95_ms"]), _fmt(t["recorded_cost_usd"], 6), _fmt(t["predicted_cost_usd"], 6),
        ))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    lines += ["  ".join(str(v).rjust(w) for v, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
