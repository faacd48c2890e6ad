"""``npcflow cost report``: what the replies of a time window cost, per tier, tenant and NPC,
and what the caches saved, read from the PostgreSQL tables the postgres sink writes.

The source is ``replies`` joined with ``costs`` (``infrastructure/sql/001_outputs.sql``): one row
per request id, the reply that won (the sink keeps the newer one), so a replayed or retried
batch is counted once. Why PostgreSQL and not Prometheus: counters restart with their process
and say nothing per NPC; the tables hold every reply for as long as ops keep them.

- **tier** is the tier whose engine served the reply (``served_tier``; the requested tier when
  nothing served): ``cost_usd`` was priced at that tier's rate, so a Silver request that fell back
  to Bronze is Bronze money.
- **saved** is what each answer from a cache (intent cache, default intent, result cache) would
  have cost from its tier's engine, :meth:`Pricing.saved` — priced with the pricing file in force
  now (``NPCFLOW_PRICING_FILE``), like ``npcflow_cost_saved_usd_total``; the tables store no savings.
- One statement reads the window once (see ``_REPORT``), so the breakdowns add up to the total
  even while a sink writes.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline.observability.cost import CACHED, Pricing
from topics.errors import UserFacingError

_TIER_ORDER = {"gold": 0, "silver": 1, "bronze": 2}


class CostReportError(UserFacingError, RuntimeError):
    """The database is unreachable, not migrated, or an option is malformed."""


@dataclass(frozen=True)
class CostLine:
    """One row of a breakdown: replies, how many an engine and a cache answered, cost and savings."""

    key: str
    replies: int
    engine: int
    cached: int
    cost_usd: float
    saved_usd: float

    @property
    def saved_share(self) -> float:
        """Savings as a share of what the window would have cost without the caches."""
        spend = self.cost_usd + self.saved_usd
        return self.saved_usd / spend if spend > 0 else 0.0


@dataclass
class CostReport:
    since_s: float
    since: datetime
    schema: str
    pricing: str
    total: CostLine
    tiers: list[CostLine] = field(default_factory=list)
    tenants: list[CostLine] = field(default_factory=list)
    #: The NPCs that cost most, ``tenant/npc``; at most ``top`` of them.
    npcs: list[CostLine] = field(default_factory=list)
    npcs_in_window: int = 0

    def as_json(self) -> dict[str, Any]:
        def line(c: CostLine) -> dict[str, Any]:
            return asdict(c) | {"saved_share": round(c.saved_share, 6)}

        return {
            "since_s": self.since_s,
            "since": self.since.isoformat(),
            "schema": self.schema,
            "pricing": self.pricing,
            "total": line(self.total),
            "tiers": [line(c) for c in self.tiers],
            "tenants": [line(c) for c in self.tenants],
            "npcs": [line(c) for c in self.npcs],
            "npcs_in_window": self.npcs_in_window,
        }


# One statement, one pass over the window: the replies are first summed per (tenant, NPC, tier),
# a set as small as the active NPCs, and every breakdown is summed from that. One statement reads
# one snapshot (the breakdowns add up to the total while a sink writes) and needs no temporary
# table, so it runs on a read replica (an Aurora reader endpoint) too. s_tier/s_by/s_usd: what a
# cached answer saves, per tier and served_by, from the pricing file.
_REPORT = """
WITH per AS MATERIALIZED (
    SELECT r.tenant_id, r.npc_id, COALESCE(r.served_tier, r.tier) AS tier, count(*) AS replies,
           count(*) FILTER (WHERE r.served_by = 'engine') AS engine,
           count(*) FILTER (WHERE r.served_by = ANY(%(cached)s)) AS cached,
           COALESCE(sum(c.cost_usd), 0) AS cost_usd, COALESCE(sum(s.usd), 0) AS saved_usd
    FROM replies r
    LEFT JOIN costs c ON c.request_id = r.request_id
    LEFT JOIN unnest(%(s_tier)s::text[], %(s_by)s::text[], %(s_usd)s::float8[]) AS s(tier, served_by, usd)
           ON s.tier = r.tier AND s.served_by = r.served_by
    WHERE r.replied_at >= %(since)s AND (%(tenant)s::text IS NULL OR r.tenant_id = %(tenant)s)
    GROUP BY 1, 2, 3
)
SELECT 'total', 'total', {sums} FROM per
UNION ALL SELECT 'tiers', tier, {sums} FROM per GROUP BY tier
UNION ALL SELECT 'tenants', tenant_id, {sums} FROM per GROUP BY tenant_id
UNION ALL (
    SELECT 'npcs', tenant_id || '/' || npc_id, {sums} FROM per GROUP BY tenant_id, npc_id
    ORDER BY 7 DESC, 3 DESC, 2 LIMIT %(top)s
)
UNION ALL SELECT 'npc_count', '', count(DISTINCT (tenant_id, npc_id)), 0, 0, 0, 0 FROM per
""".format(
    sums=", ".join(
        f"COALESCE(sum({column}), 0)::{kind}"
        for column, kind in (
            ("replies", "bigint"),
            ("engine", "bigint"),
            ("cached", "bigint"),
            ("cost_usd", "float8"),
            ("saved_usd", "float8"),
        )
    )
)


def _savings_table(pricing: Pricing) -> dict[str, list[Any]]:
    rows = [(tier, by, pricing.saved(tier, by)) for tier in pricing.tiers for by in sorted(CACHED)]
    return {"s_tier": [r[0] for r in rows], "s_by": [r[1] for r in rows], "s_usd": [r[2] for r in rows]}


def _line(row: tuple[Any, ...]) -> CostLine:
    key, replies, engine, cached, cost, saved = row
    return CostLine(str(key), int(replies), int(engine), int(cached), float(cost), float(saved))


def cost_report(
    url: str,
    since_s: float,
    *,
    pricing: Pricing,
    schema: str = "public",
    tenant: str | None = None,
    top: int = 10,
    now: float | None = None,
) -> CostReport:
    """Read the report for the ``since_s`` seconds before ``now`` from the database at ``url``."""
    import psycopg
    from psycopg import sql

    since = datetime.fromtimestamp((time.time() if now is None else now) - since_s, UTC)
    params: dict[str, Any] = {
        "since": since,
        "tenant": tenant,
        "cached": sorted(CACHED),
        "top": max(0, top),
    } | _savings_table(pricing)
    try:
        conn = psycopg.connect(url, connect_timeout=5, autocommit=False)
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CostReportError(f"PostgreSQL unreachable (NPCFLOW_DATABASE_URL): {first}") from None
    with conn:
        conn.read_only = True  # a report never writes: fine on a read replica, safe on the primary
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        missing = [
            t
            for t in ("replies", "costs")
            if conn.execute("SELECT to_regclass(%s)", (t,)).fetchone() == (None,)
        ]
        if missing:
            raise CostReportError(
                f"PostgreSQL schema {schema!r} has no {' or '.join(missing)} table: run `npcflow db migrate` "
                "(and a postgres sink, `npcflow run sink --sink postgres`, to fill it)"
            )
        rows = conn.execute(_REPORT, params).fetchall()  # type: ignore[arg-type]
    lines: dict[str, list[CostLine]] = defaultdict(list)
    for kind, *row in rows:
        lines[kind].append(_line(tuple(row)))

    # UNION ALL keeps no order: sort each breakdown here (the NPCs' LIMIT already took the top).
    def by_cost(c: CostLine) -> tuple[float, int, str]:
        return -c.cost_usd, -c.replies, c.key

    return CostReport(
        since_s=since_s,
        since=since,
        schema=schema,
        pricing=pricing.source,
        total=lines["total"][0],
        tiers=sorted(lines["tiers"], key=lambda c: (_TIER_ORDER.get(c.key, 9), c.key)),
        tenants=sorted(lines["tenants"], key=by_cost),
        npcs=sorted(lines["npcs"], key=by_cost),
        npcs_in_window=lines["npc_count"][0].replies,
    )


def _usd(value: float) -> str:
    """Dollars with enough digits for the fractions of a cent a reply costs."""
    return f"{value:.6f}" if abs(value) < 1 else f"{value:,.2f}"


def render(report: CostReport) -> str:
    """The report as the terminal table ``npcflow cost report`` prints."""
    out = [
        f"cost report: replies since {report.since:%Y-%m-%d %H:%M:%S} UTC ({_window(report.since_s)}),"
        f" schema {report.schema}, prices {report.pricing}",
    ]

    def table(title: str, lines: list[CostLine]) -> None:
        width = max([len(title), *(len(c.key) for c in lines)])
        out.append("")
        out.append(
            f"{title:<{width}}  {'replies':>8}  {'engine':>7}  {'cached':>7}"
            f"  {'cost USD':>12}  {'saved USD':>12}  {'saved':>6}"
        )
        for c in lines:
            out.append(
                f"{c.key:<{width}}  {c.replies:>8}  {c.engine:>7}  {c.cached:>7}"
                f"  {_usd(c.cost_usd):>12}  {_usd(c.saved_usd):>12}  {c.saved_share:>6.1%}"
            )

    table("tier", [*report.tiers, report.total])
    table("tenant", report.tenants)
    shown = f"top {len(report.npcs)} of {report.npcs_in_window} NPCs by cost"
    table(shown, report.npcs)
    if not report.total.replies:
        out.append("")
        out.append(
            "no replies in the window (is a postgres sink running? `npcflow run sink --sink postgres`)"
        )
    return "\n".join(out)


def _window(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"last {int(seconds // size)}{unit}"
    return f"last {seconds:g}s"
