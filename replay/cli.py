"""``npcflow replay``: a thin shell over :func:`replay.run.replay` (registered lazily by pipeline/cli.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import click
from aiokafka.errors import KafkaError

from pipeline.config import Settings
from pipeline.config.commands import pass_settings
from pipeline.since import FORMS, parse_moment
from replay.bounds import WindowError
from replay.progress import ProgressBar
from replay.report import render_table
from replay.run import ReplayOptions, run_replay
from topics.policy import RoutingPolicy


def parse_offsets(specs: tuple[str, ...]) -> dict[int, tuple[int, int | None]] | None:
    """``P:START-END`` (END exclusive, may be left out) per npc.requests partition."""
    if not specs:
        return None
    offsets: dict[int, tuple[int, int | None]] = {}
    for spec in specs:
        partition, sep, span = spec.partition(":")
        start, _, end = span.partition("-")
        try:
            first, last = int(start), (int(end) if end else None)
            offsets[int(partition)] = (first, last)
        except ValueError:
            raise WindowError(
                f"--offsets {spec!r}: write PARTITION:START-END, e.g. 0:100-200 or 3:500-"
            ) from None
        if not sep or first < 0 or (last is not None and last <= first):
            raise WindowError(f"--offsets {spec!r}: START must be ≥ 0 and END above START")
    return offsets


@click.command("replay")
@click.option(
    "--since",
    default=None,
    help=f"Window start: {FORMS}. Default: the topics' first records.",
)
@click.option("--until", default=None, help="Window end (exclusive), same forms. Default: now.")
@click.option(
    "--offsets",
    "offset_specs",
    multiple=True,
    metavar="P:START-END",
    help="Instead of --since/--until: offsets of npc.requests partition P (repeatable; END "
    "exclusive, may be left out). Decisions and replies are read over the same time span.",
)
@click.option("--prefix", default=None, help="Recorded topic prefix (default: NPCFLOW_TOPIC_PREFIX).")
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Candidate routing policy (YAML) to re-route every request through; "
    "default: the current one (NPCFLOW_POLICY_FILE or the packaged policy).",
)
@click.option(
    "--report",
    is_flag=True,
    help="Report tier changes, contradictions, dead letters, and "
    "predicted latency and cost per tier (implied by --policy).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON line, not a table.")
@click.option(
    "--into",
    default=None,
    metavar="PREFIX",
    help="Re-publish the requests into a sandbox "
    "pipeline under this topic prefix (new request ids; context replay_of = original id).",
)
@click.option(
    "--speed",
    type=float,
    default=1.0,
    show_default=True,
    help="With --into: recorded pace times this; 0 sends as fast as possible.",
)
@click.option(
    "--export",
    "export_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write one row per request (joined with decision and reply) to FILE.parquet or FILE.csv.",
)
@click.option(
    "--grace",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds past --until to read decisions and replies (a reply comes after its request).",
)
@click.option("--quiet", is_flag=True, help="No progress bar (there is none when stderr is not a terminal).")
@pass_settings
def replay_cmd(
    settings: Settings,
    since: str | None,
    until: str | None,
    offset_specs: tuple[str, ...],
    prefix: str | None,
    policy_file: Path | None,
    report: bool,
    as_json: bool,
    into: str | None,
    speed: float,
    export_path: Path | None,
    grace: float,
    quiet: bool,
) -> None:
    """Replay recorded npc.requests, npc.routing and npc.outputs over a time window.

    \b
    npcflow replay --since 2h --policy candidate.yaml          what would it have changed?
    npcflow replay --since 2025-06-01T10:00Z --until 2025-06-01T11:00Z --export day.parquet
    npcflow replay --since 10m --into sandbox. --speed 4        try a deployment on real traffic
    """
    report = report or policy_file is not None
    if not (report or into or export_path):
        raise click.UsageError("say what to do: --report/--policy FILE, --into PREFIX and/or --export FILE")
    if offset_specs and (since or until):
        raise click.UsageError("give either --offsets or --since/--until, not both")
    if speed < 0:
        raise click.UsageError("--speed must be ≥ 0")
    now = int(time.time() * 1000)
    options = ReplayOptions(
        source_prefix=settings.topic_prefix if prefix is None else prefix,
        since_ms=parse_moment(since, now) if since else None,
        until_ms=parse_moment(until, now, option="--until") if until else now,
        offsets=parse_offsets(offset_specs),
        grace_ms=int(grace * 1000),
        policy=RoutingPolicy.load(policy_file or settings.policy_file) if report else None,
        into=into,
        speed=speed,
        export=export_path,
        max_open=settings.replay.max_open,
    )
    if options.since_ms is not None and options.since_ms >= options.until_ms:
        raise click.UsageError("--since must be before --until")
    # Offline re-routing dead-letters and demotes like a router: one log line each would drown the report.
    logging.getLogger("npcflow.router").setLevel(logging.ERROR)
    bar = ProgressBar(enabled=not quiet)
    try:
        summary = asyncio.run(run_replay(settings, options, bar.update))
    except KafkaError as exc:
        raise click.ClickException(f"Kafka at {settings.kafka_bootstrap}: {exc}") from None
    finally:
        bar.finish()
    if as_json:
        click.echo(json.dumps(summary, sort_keys=True))
    elif "report" in summary:
        click.echo(render_table(summary))
    else:
        read = summary["read"]
        click.echo(f"{read['events']} events read ({read['method']}) in {read['seconds']} s")
    if not as_json and "sandbox" in summary:
        s = summary["sandbox"]
        click.echo(f"sandbox {s['prefix']}: {s['sent']} requests re-published (run {s['run']})")
    if not as_json and "export" in summary:
        click.echo(f"exported {summary['export']['rows']} rows to {summary['export']['path']}")


replay = replay_cmd
