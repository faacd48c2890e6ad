"""``npcflow top``: the dashboard's figures in a terminal, from the processes' own ``/metrics``.

Each refresh scrapes every target (``NPCFLOW_METRICS_TARGETS`` or ``--metrics``) with the same
parser :mod:`scrape` uses for validate, then compares it with the previous scrape: rates, cost per
minute and the p95 are over that window (the difference of two cumulative histograms, as
Prometheus' ``rate`` + ``histogram_quantile`` computes them); counts such as misses and served_by
are since each process started. Nothing is kept between runs and no server is needed beyond the
processes themselves, so it works on a laptop's demo and over a ``kubectl port-forward`` alike.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from prometheus_client.samples import Sample

from pipeline.observability.scrape import Scrape, scrape
from topics.catalogue import Tier

TIERS = tuple(t.value for t in Tier)
SERVED_BY = ("engine", "cache", "default_intent", "result_cache", "none")
#: Answers that cost no engine call: the cache hit rate's numerator.
CACHE_HITS = ("cache", "result_cache")
BREAKER_STATES = {0: "closed", 1: "half-open", 2: "open"}


def _key(sample: Sample) -> tuple[str, tuple[tuple[str, str], ...]]:
    return sample.name, tuple(sorted(sample.labels.items()))


def window(current: Scrape, previous: Scrape) -> Scrape:
    """``current - previous`` per series, summed over processes: the window's counters and
    histogram buckets. A series that went down (a process restarted) counts from 0 again."""
    before: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
    now: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
    for s in previous.samples:
        before[_key(s)] += s.value
    for s in current.samples:
        now[_key(s)] += s.value
    out = Scrape(families=set(current.families), failed=dict(current.failed))
    for (name, labels), value in now.items():
        delta = value - before.get((name, labels), 0.0)
        out.samples.append(Sample(name, dict(labels), value if delta < 0 else delta))
    return out


@dataclass
class TierRow:
    tier: str
    budget_ms: int | None
    #: Reply latency p95 over the window (None: no reply in it) and since the processes started.
    p95_ms: float | None
    p95_all_ms: float | None
    replies_per_s: float
    replies: int
    sla_misses: int
    served_by: dict[str, int]
    fallbacks_out: int
    breaker: str
    cost_usd_per_min: float
    saved_usd_per_min: float
    #: Answers from the intent or result cache, share of the tier's replies (None: no replies).
    cache_hit_rate: float | None
    lag: int | None
    in_flight: int
    pending: int

    @property
    def within_sla(self) -> bool | None:
        p95 = self.p95_ms if self.p95_ms is not None else self.p95_all_ms
        return None if p95 is None or self.budget_ms is None else p95 <= self.budget_ms


@dataclass
class TopView:
    at: float
    window_s: float | None
    tiers: list[TierRow]
    #: ``from→to reason`` → count since start.
    fallbacks: dict[str, int] = field(default_factory=dict)
    breakers: dict[str, str] = field(default_factory=dict)
    #: ``group topic`` → records behind, as each consumer last exported it.
    lag: dict[str, int] = field(default_factory=dict)
    dead_letters: int = 0
    #: target → role (``router``, ``worker-gold``, …) or ``DOWN: why``.
    targets: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        for row, data in zip(self.tiers, out["tiers"], strict=True):
            data["within_sla"] = row.within_sla
        return out


def _breaker(value: float | None) -> str:
    if value is None:
        return "-"
    return BREAKER_STATES.get(int(value), str(value))


def _worst(s: Scrape, name: str, label: str) -> dict[str, float]:
    """A gauge per label value, the highest any process reports (an open breaker anywhere shows)."""
    out: dict[str, float] = {}
    for sample in s.samples:
        if sample.name == name and label in sample.labels:
            key = sample.labels[label]
            out[key] = max(out.get(key, sample.value), sample.value)
    return out


def _p95_ms(s: Scrape, tier: str) -> float | None:
    """A tier's reply-latency p95 in milliseconds (the budgets' unit) from the seconds histogram."""
    seconds = s.quantile("npcflow_reply_latency_seconds", 0.95, tier=tier)
    return None if seconds is None else seconds * 1000


def build_view(
    current: Scrape,
    previous: Scrape | None,
    window_s: float | None,
    budgets: dict[str, int],
    targets: dict[str, str],
) -> TopView:
    """The figures of one refresh from the latest scrape and the one before it (None: the first)."""
    win = window(current, previous) if previous is not None and window_s else None
    per_s = (1.0 / window_s) if win is not None and window_s else 0.0
    breakers = {k: _breaker(v) for k, v in _worst(current, "npcflow_breaker_state", "breaker").items()}
    lag_series: dict[str, int] = {}
    for sample in current.samples:
        if sample.name == "npcflow_consumer_lag":
            key = f"{sample.labels.get('group', '')} {sample.labels.get('topic', '')}"
            lag_series[key] = lag_series.get(key, 0) + int(sample.value)
    rows = []
    for tier in TIERS:
        served = {
            by: int(current.total("npcflow_replies_total", tier=tier, served_by=by)) for by in SERVED_BY
        }
        replies = int(current.total("npcflow_replies_total", tier=tier))
        tier_lag = [v for k, v in lag_series.items() if k.endswith(f"npc.requests.{tier}")]
        window_replies = win.total("npcflow_replies_total", tier=tier) if win is not None else 0.0
        rows.append(
            TierRow(
                tier=tier,
                budget_ms=budgets.get(tier),
                p95_ms=_p95_ms(win, tier) if win is not None else None,
                p95_all_ms=_p95_ms(current, tier),
                replies_per_s=window_replies * per_s,
                replies=replies,
                sla_misses=int(current.total("npcflow_sla_misses_total", tier=tier)),
                served_by={by: n for by, n in served.items() if n},
                fallbacks_out=int(current.total("npcflow_fallbacks_total", from_tier=tier)),
                breaker=breakers.get(f"tier:{tier}", "-"),
                cost_usd_per_min=(win.total("npcflow_cost_usd_total", tier=tier) * per_s * 60)
                if win
                else 0.0,
                saved_usd_per_min=(win.total("npcflow_cost_saved_usd_total", tier=tier) * per_s * 60)
                if win
                else 0.0,
                cache_hit_rate=sum(served[by] for by in CACHE_HITS) / replies if replies else None,
                lag=sum(tier_lag) if tier_lag else None,
                in_flight=int(current.total("npcflow_in_flight", tier=tier)),
                pending=int(current.total("npcflow_pending", tier=tier)),
            )
        )
    fallbacks: dict[str, int] = defaultdict(int)
    for sample in current.samples:
        if sample.name == "npcflow_fallbacks_total" and sample.value:
            labels = sample.labels
            fallbacks[f"{labels['from_tier']}→{labels['to_tier']} {labels['reason']}"] += int(sample.value)
    return TopView(
        at=time.time(),
        window_s=window_s if win is not None else None,
        tiers=rows,
        fallbacks=dict(fallbacks),
        breakers=breakers,
        lag=lag_series,
        dead_letters=int(current.total("npcflow_dead_letters_total")),
        targets=targets,
    )


def scrape_targets(targets: list[str], timeout_s: float = 2.0) -> tuple[Scrape, dict[str, str]]:
    """One scrape of every target; each target's role (``npcflow_process_info``) or why it is down."""
    merged = Scrape()
    roles: dict[str, str] = {}
    for target in targets:
        one = scrape([target], timeout_s)
        if one.failed:
            roles[target] = f"DOWN: {one.failed[target]}"
            merged.failed.update(one.failed)
            continue
        names = [s.labels["role"] for s in one.samples if s.name == "npcflow_process_info" and s.value]
        roles[target] = ",".join(names) or "?"
        merged.samples.extend(one.samples)
        merged.families |= one.families
    return merged, roles


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _usd(value: float) -> str:
    return f"{value:.6f}" if value < 1 else f"{value:,.2f}"


def render(view: TopView) -> str:
    """The view as plain text (one screen): a tier table, then fallbacks, breakers, lag, processes."""
    up = sum(1 for role in view.targets.values() if not role.startswith("DOWN"))
    window = f"window {view.window_s:.1f} s" if view.window_s else "since start"
    lines = [
        f"npcflow top  {time.strftime('%H:%M:%S', time.localtime(view.at))}  "
        f"{up}/{len(view.targets)} processes up  {window}  (p95, rates: the window; counts: since start)",
        "",
        f"{'tier':7} {'SLA ms':>6} {'p95 ms':>7} {'p95 all':>7} {'ok':>3} {'rep/s':>6} {'replies':>8}"
        f" {'miss':>5} {'fallb':>5} {'breaker':>9} {'$/min':>9} {'saved$/min':>10} {'hit%':>5}"
        f" {'lag':>5} {'infl':>4} {'pend':>4}  served_by",
    ]
    for r in view.tiers:
        ok = {True: "yes", False: "NO", None: "-"}[r.within_sla]
        hit = "-" if r.cache_hit_rate is None else f"{r.cache_hit_rate:.0%}"
        served = " ".join(f"{by}={n}" for by, n in r.served_by.items()) or "-"
        lines.append(
            f"{r.tier:7} {r.budget_ms if r.budget_ms is not None else '-':>6} {_ms(r.p95_ms):>7}"
            f" {_ms(r.p95_all_ms):>7} {ok:>3} {r.replies_per_s:>6.1f} {r.replies:>8} {r.sla_misses:>5}"
            f" {r.fallbacks_out:>5} {r.breaker:>9} {_usd(r.cost_usd_per_min):>9}"
            f" {_usd(r.saved_usd_per_min):>10} {hit:>5} {'-' if r.lag is None else r.lag:>5}"
            f" {r.in_flight:>4} {r.pending:>4}  {served}"
        )
    lines.append("")
    fallbacks = ", ".join(f"{k} {v}" for k, v in sorted(view.fallbacks.items())) or "none"
    lines.append(f"fallbacks   {fallbacks}")
    not_closed = {k: v for k, v in view.breakers.items() if v != "closed"}
    breakers = ", ".join(f"{k} {v}" for k, v in sorted(not_closed.items()))
    lines.append(
        f"breakers    {len(view.breakers) - len(not_closed)} closed" + (f"; {breakers}" if breakers else "")
    )
    lag = ", ".join(f"{k} {v}" for k, v in sorted(view.lag.items())) or "-"
    lines.append(f"lag         {lag}")
    lines.append(f"dead letters {view.dead_letters}")
    for target, role in sorted(view.targets.items()):
        lines.append(f"  {target:<24} {role}")
    return "\n".join(lines)
