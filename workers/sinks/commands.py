"""The sinks' commands: ``npcflow run sink``, ``npcflow db migrate``, ``npcflow search``.

Registered by :mod:`pipeline.cli`; only click is imported here, each store client when its
command runs.
"""

from __future__ import annotations

import asyncio
import json

import click

from pipeline.config import Settings
from pipeline.config.commands import pass_settings
from workers.sinks import SINKS


@click.command("sink")
@click.option("--sink", "name", type=click.Choice(list(SINKS)), required=True, help="The store to write.")
@pass_settings
def run_sink_cmd(settings: Settings, name: str) -> None:
    """A sink: consume npc.outputs in its own consumer group and write batches to one store."""
    from pipeline.observability.metrics import serve_metrics
    from workers.sinks.runner import SinkFailed, run_sink

    serve_metrics(settings.process.metrics_port, settings.observability.metrics_host)
    try:
        asyncio.run(run_sink(settings, name))
    except SinkFailed as exc:
        raise click.ClickException(str(exc)) from exc


@click.group("db")
def db() -> None:
    """The PostgreSQL (Aurora) database the postgres sink writes."""


@db.command("migrate")
@click.option("--schema", default=None, help="PostgreSQL schema (default: NPCFLOW_SINK_PG_SCHEMA, public).")
@pass_settings
def db_migrate(settings: Settings, schema: str | None) -> None:
    """Apply the SQL migrations in infrastructure/sql/ not applied yet (safe to repeat)."""
    import psycopg

    from workers.sinks.exceptions import SinkSetupError
    from workers.sinks.migrations import migrate

    if not settings.database_url:
        raise SinkSetupError("no database configured: set NPCFLOW_DATABASE_URL=postgresql://…")
    schema = schema or settings.sinks.pg_schema
    try:
        applied = asyncio.run(migrate(settings.database_url, schema))
    except psycopg.Error as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise click.ClickException(f"migrating schema {schema!r} failed: {first_line}") from exc
    for name in applied:
        click.echo(f"applied {name}")
    click.echo(f"schema {schema!r} is up to date" + ("" if applied else " (nothing to apply)"))


@click.command("search")
@click.argument("text", required=False)
@click.option("--size", default=10, show_default=True, help="Hits to print.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per hit.")
@click.option(
    "--install-templates", is_flag=True, help="Install the index templates in infrastructure/opensearch/."
)
@pass_settings
def search_cmd(
    settings: Settings, text: str | None, size: int, as_json: bool, install_templates: bool
) -> None:
    """Search what NPCs said (story arcs and dialogue in OpenSearch) for TEXT."""
    from opensearchpy.exceptions import OpenSearchException

    from workers.sinks.opensearch import TEMPLATES_DIR, OpenSearchSink

    if not text and not install_templates:
        raise click.UsageError("give TEXT to search for, or --install-templates")
    sink = OpenSearchSink.from_settings(settings)

    async def go() -> list[dict[str, object]]:
        async with sink:
            if install_templates:
                await sink.ensure_templates()
            return await sink.search(text, size) if text else []

    try:
        hits = asyncio.run(go())
    except OpenSearchException as exc:
        raise click.ClickException(f"OpenSearch at {sink.url}: {str(exc).splitlines()[0]}") from exc
    if install_templates:
        click.echo("templates installed: " + ", ".join(sorted(p.stem for p in TEMPLATES_DIR.glob("*.json"))))
    for hit in hits:
        if as_json:
            click.echo(json.dumps(hit))
            continue
        text_out = str(hit.get("text", "")).replace("\n", " ")
        who = f"{hit['index']}  {hit['id']}  {hit.get('npc_id', '')}"
        click.echo(f"{hit['score'] or 0:6.2f}  {who}: {text_out[:160]}")
    if text and not hits:
        click.echo("no hits")
