"""``npcflow validate``, ``npcflow cost report`` and ``npcflow top``: thin shells over this package."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import click

from pipeline.config import Settings
from pipeline.config.commands import load_settings, pass_settings
from topics.catalogue import Tier

TIER_CHOICES = [t.value for t in Tier] + ["all"]

#: The ``ctx.meta`` key under which pipeline/cli.py (the composition root) puts the function that
#: runs ``validate --embedded``: it starts the dev stack (devstack/validate.py), which the product
#: never imports.
EMBEDDED_VALIDATOR = "npcflow.validate_embedded"


def _targets(settings: Settings, given: tuple[str, ...]) -> list[str]:
    return list(given) or list(settings.observability.metrics_targets)


def _print_human(result: dict[str, Any]) -> None:
    for tier in (t.value for t in Tier):
        r = result.get(tier)
        if r is None:
            continue
        verdict = "ok" if r["ok"] else "FAIL"
        sla = "within SLA" if r["within_sla"] else "NOT within SLA"
        latency = "-" if r["latency_ms"] is None else f"{r['latency_ms']:.1f} ms"
        click.echo(f"{tier:7} {verdict:4}  {latency:>10} (budget {r['budget_ms']} ms, {sla})  {r['details']}")
        for problem in r["problems"]:
            click.echo(f"        ✗ {problem}")
    metrics = result.get("metrics")
    if metrics is not None:
        problems = f"missing {metrics['missing']}, unreachable {metrics['unreachable']}"
        state = "ok" if metrics["ok"] else problems
        click.echo(f"metrics {len(metrics['families'])} npcflow families scraped: {state}")
    click.echo("validation " + ("passed" if result["ok"] else "FAILED"))


@click.command("validate")
@click.argument("tier", type=click.Choice(TIER_CHOICES))
@click.option("--embedded", is_flag=True, help="Start a fresh embedded deployment, validate it, stop it.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option(
    "--engines",
    default=None,
    metavar="TIER=ENGINE,…",
    help="With --embedded: engines per tier (default: NPCFLOW_ENGINE_<TIER>, NPCFLOW_ENGINE, embedded).",
)
@click.option("--burst", default=20, show_default=True, help="Gold requests judged for the p95.")
@click.option(
    "--metrics",
    "metrics_targets",
    multiple=True,
    metavar="HOST:PORT",
    help="A process's metrics port to scrape (repeatable; default NPCFLOW_METRICS_TARGETS).",
)
@click.pass_context
def validate_cmd(
    ctx: click.Context,
    tier: str,
    embedded: bool,
    as_json: bool,
    engines: str | None,
    burst: int,
    metrics_targets: tuple[str, ...],
) -> None:
    """Probe TIER (or all) end to end: answered by the right tier, breaker closed, lag bounded,
    latency judged against the configured budgets. Exits 1 on failure."""
    from pipeline.observability.scrape import scrape
    from pipeline.observability.validate import Validator, metrics_report
    from pipeline.observability.validate import as_json as to_json
    from topics.errors import UserFacingError

    settings = load_settings(ctx)
    tiers = list(Tier) if tier == "all" else [Tier(tier)]

    def progress(line: str) -> None:
        if not as_json:
            click.echo(f"… {line}", err=True)

    if embedded:
        validate_embedded = ctx.meta.get(EMBEDDED_VALIDATOR)
        if validate_embedded is None:
            raise UserFacingError("--embedded needs the embedded stack: pip install 'npcflow[embedded]'")
        result = validate_embedded(settings, tiers, engines=engines, burst=burst, progress=progress)
    else:
        settings.require_kafka()
        progress(f"probing {', '.join(t.value for t in tiers)} on {settings.kafka_bootstrap}")
        reports = asyncio.run(Validator(settings, burst=burst).run(tiers))
        targets = _targets(settings, metrics_targets)
        result = to_json(reports, metrics_report(scrape(targets)) if targets else None)
    if as_json:
        click.echo(json.dumps(result))
    else:
        _print_human(result)
    sys.exit(0 if result["ok"] else 1)


@click.group("cost")
def cost_group() -> None:
    """What replies cost (pricing.yaml, NPCFLOW_PRICING_FILE) and what the caches saved."""


@cost_group.command("report")
@click.option(
    "--since",
    default="1h",
    show_default=True,
    help="The window's start: an age (90s, 15m, 1h30m, 2d), an ISO-8601 time or epoch ms.",
)
@click.option("--tenant", default=None, help="Only this tenant's replies.")
@click.option("--top", default=10, show_default=True, help="NPCs listed (those that cost most).")
@click.option("--schema", default=None, help="PostgreSQL schema (default: NPCFLOW_SINK_PG_SCHEMA, public).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@pass_settings
def cost_report_cmd(
    settings: Settings, since: str, tenant: str | None, top: int, schema: str | None, as_json: bool
) -> None:
    """Cost per tier, tenant and NPC over the window, with the caches' savings, from the
    PostgreSQL tables the postgres sink writes (NPCFLOW_DATABASE_URL)."""
    from pipeline.observability.cost import Pricing
    from pipeline.observability.cost_report import CostReportError, cost_report, render
    from pipeline.since import window_s

    seconds = window_s(since)
    if not settings.database_url:
        raise CostReportError(
            "no PostgreSQL configured: set NPCFLOW_DATABASE_URL=postgresql://… "
            "(or start the embedded stack with `npcflow stack up --detach`)"
        )
    report = cost_report(
        settings.database_url,
        seconds,
        pricing=Pricing.from_settings(settings.observability),
        schema=schema or settings.sinks.pg_schema,
        tenant=tenant,
        top=top,
    )
    click.echo(json.dumps(report.as_json()) if as_json else render(report))


@click.command("top")
@click.option(
    "--metrics",
    "metrics_targets",
    multiple=True,
    metavar="HOST:PORT",
    help="A process's metrics port (repeatable; default NPCFLOW_METRICS_TARGETS).",
)
@click.option("--interval", default=1.0, show_default=True, help="Seconds between refreshes.")
@click.option("--once", is_flag=True, help="Print one snapshot (two scrapes --interval apart) and exit.")
@click.option("--json", "as_json", is_flag=True, help="With --once: print one JSON object.")
@pass_settings
def top_cmd(
    settings: Settings, metrics_targets: tuple[str, ...], interval: float, once: bool, as_json: bool
) -> None:
    """Live per-tier view scraped from the processes' /metrics: p95 vs SLA, misses, served_by,
    fallbacks, breakers, cost per minute, cache hit rate, lag. Ctrl-C quits."""
    import time

    from pipeline.observability.top import build_view, render, scrape_targets
    from topics.errors import UserFacingError
    from topics.policy import RoutingPolicy

    targets = _targets(settings, metrics_targets)
    if not targets:
        raise UserFacingError("no metrics targets: set NPCFLOW_METRICS_TARGETS=host:port,… or pass --metrics")
    if as_json and not once:
        raise UserFacingError("--json prints one snapshot: use it with --once")
    interval = max(0.1, interval)
    policy = RoutingPolicy.load(settings.policy_file)
    budgets = {tier.value: spec.default_budget_ms for tier, spec in policy.tiers.items()}
    previous, previous_at = scrape_targets(targets)[0], time.monotonic()
    live = sys.stdout.isatty()
    try:
        while True:
            time.sleep(interval)
            current, roles = scrape_targets(targets)
            now = time.monotonic()
            view = build_view(current, previous, now - previous_at, budgets, roles)
            previous, previous_at = current, now
            if once:
                click.echo(json.dumps(view.as_json()) if as_json else render(view))
                sys.exit(0 if len(current.failed) < len(targets) else 1)
            # Redraw in place on a terminal (ANSI home + clear); a pipe gets one snapshot after another.
            click.echo(("\x1b[H\x1b[2J" if live else "\n") + render(view))
    except KeyboardInterrupt:
        return


#: Every command of this module, registered on ``npcflow`` by pipeline/cli.py.
COMMANDS: tuple[click.Command, ...] = (validate_cmd, cost_group, top_cmd)
