"""The ``npcflow`` command: a thin shell over importable functions."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path

import click

from pipeline import eventloop
from pipeline.config import ConfigError, Settings
from pipeline.stack_cli import stack
from topics.catalogue import CATALOGUE, Tier


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


class _Cli(click.Group):
    """Errors a user can fix (configuration, an unreachable stack) become one clear line, not a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        from pipeline.policy import PolicyError
        from pipeline.stack import StackError
        from workers.engines.base import EngineUnavailable

        try:
            return super().invoke(ctx)
        except (ConfigError, PolicyError, StackError, EngineUnavailable) as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", default="info", show_default=True, help="debug, info, warning or error.")
def main(log_level: str) -> None:
    """npcflow: route NPC inference requests over Kafka to Gold, Silver and Bronze tiers.

    Endpoints come from NPCFLOW_* environment variables, else from .npcflow/stack.env written by
    `npcflow stack up --detach`.
    """
    _setup_logging(log_level)
    eventloop.install()


main.add_command(stack)


@main.group()
def topics() -> None:
    """The topic catalogue."""


@topics.command("create")
@click.option("--prefix", default=None, help="Topic name prefix (default: NPCFLOW_TOPIC_PREFIX).")
def topics_create(prefix: str | None) -> None:
    """Create every catalogue topic that does not exist yet (safe to repeat)."""
    from topics.admin import create_topics

    settings = Settings.from_env()
    result = asyncio.run(create_topics(settings.require_kafka(), prefix))
    for name, outcome in result.items():
        click.echo(f"{name}: {outcome}")


@topics.command("list")
@click.option("--prefix", default=None, help="Topic name prefix (default: NPCFLOW_TOPIC_PREFIX).")
def topics_list(prefix: str | None) -> None:
    """Print the catalogue: name, key, partitions, retention and purpose."""
    for spec in CATALOGUE:
        keep = "compacted" if spec.compacted else f"retention {spec.retention_ms} ms"
        click.echo(
            f"{spec.name(prefix):28} key={spec.key:11} partitions={spec.partitions}  {keep}  {spec.purpose}"
        )


@main.group()
def schema() -> None:
    """Event schemas for non-Python game servers."""


@schema.command("export")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--prefix", default="", help="Topic name prefix used in the AsyncAPI addresses.")
def schema_export(directory: Path, prefix: str) -> None:
    """Write one JSON Schema per event and an AsyncAPI 3 document to DIRECTORY."""
    from topics.export import export

    for path in export(directory, prefix):
        click.echo(str(path))


@main.group()
def run() -> None:
    """Run one pipeline process in the foreground (Ctrl-C stops it cleanly)."""


@run.command("router")
def run_router_cmd() -> None:
    """The router: validate, classify, stamp the deadline, forward to the tier topic."""
    from pipeline.router import run_router

    run_router(Settings.from_env())


@run.command("worker")
@click.option("--tier", type=click.Choice([t.value for t in Tier]), required=True)
@click.option(
    "--engine", default=None, help="Engine spec (default: NPCFLOW_ENGINE_<TIER>, NPCFLOW_ENGINE, embedded)."
)
def run_worker_cmd(tier: str, engine: str | None) -> None:
    """A tier worker: consume the tier topic, call the engine, reply."""
    from pipeline.metrics import serve_metrics_from_env
    from workers.engines import build_engine, engine_spec
    from workers.tier_worker import WorkerConfig, run_worker

    settings = Settings.from_env()
    tier_enum = Tier(tier)
    spec = engine or engine_spec(tier)
    config = WorkerConfig.from_env(tier_enum, settings.require_kafka(), settings.topic_prefix)
    serve_metrics_from_env()
    asyncio.run(run_worker(config, build_engine(spec, tier)))


@main.command("demo")
@click.option("--duration", default=60.0, show_default=True, help="Seconds of simulated traffic.")
@click.option(
    "--rate", default=None, type=float, help="Requests per second (default: what the engine sustains)."
)
@click.option("--npcs", default=300, show_default=True, help="Simulated NPCs.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON summary line instead of the live table."
)
def demo_cmd(duration: float, rate: float | None, npcs: int, as_json: bool) -> None:
    """Start the embedded stack, the router and three tier workers, and simulate a game server."""
    from pipeline.demo import run_demo

    summary = run_demo(duration=duration, rate=rate, npcs=npcs, as_json=as_json)
    if as_json:
        click.echo(json.dumps(summary))
    ok = summary["lost"] == 0 and summary["sent"] == summary["replied"]
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
