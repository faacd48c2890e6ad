"""PostgreSQL (Aurora) sink: requests, replies, story arcs and costs, one row per request id.

A batch is one transaction. The common case, new request ids, is one COPY per table straight
into the tables: what a bare COPY costs the server, in as many round trips. If any row exists
already (a replay, a batch retried after a crash) the unique index refuses it, the transaction
rolls back, and the batch takes the idempotent path in a second one: the same COPY text into
temporary staging tables shaped like the real ones, then one ``INSERT … SELECT … ON CONFLICT
(request_id)`` per table. A reply
only replaces a stored one that is not newer (``replied_at_ms``), so a late engine result wins
over the fallback reply it followed, in any order.

The COPY text is formatted here (:func:`rows`), not by psycopg's ``write_row``: this process is
CPU-bound on consuming and validating its records, and adapting some forty values an output one
by one costs about three times the client CPU of an f-string per row (identifiers and enum values
need no quoting, the schema's patterns keep tabs and backslashes out of them). Each output's rows
are formatted by :meth:`PostgresSink.encode`, which the runner calls as it parses the record, so
this CPU overlaps the previous batch's COPY instead of delaying this batch's; ``write`` only joins
them. The JSON columns go through msgspec (jsonb keeps the same value for any spelling) and a
timestamp's text is built once per second. The rows are exactly
:func:`workers.sinks.postgres_rows.table_rows` (the integration tests compare them).
Tables: ``infrastructure/sql/`` (``npcflow db migrate``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

import msgspec
import psycopg

from pipeline.config import Settings
from topics.schemas import Output
from workers.sinks.base import Sink, is_story_arc, latest_per_request
from workers.sinks.exceptions import SinkSetupError, SinkUnavailable
from workers.sinks.migrations import check
from workers.sinks.postgres_rows import COLUMNS

log = logging.getLogger("npcflow.sinks")

_NULL = "\\N"


def _staging(table: str) -> str:
    return f"npcflow_staging_{table}"


def _upsert(table: str) -> str:
    """Staged rows into ``table``: a request is written once, a reply replaced only by a newer one."""
    columns = COLUMNS[table]
    head = f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {_staging(table)} ON CONFLICT (request_id)"
    if table == "requests":
        return f"{head} DO NOTHING"
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns.split(", ") if c != "request_id")
    return f"{head} DO UPDATE SET {updates} WHERE {table}.replied_at_ms <= EXCLUDED.replied_at_ms"


CREATE_STAGING = [
    f"CREATE TEMP TABLE IF NOT EXISTS {_staging(table)} (LIKE {table}) ON COMMIT DELETE ROWS"
    for table in COLUMNS
]
UPSERTS = {table: _upsert(table) for table in COLUMNS}


def _esc(value: str) -> str:
    """COPY text quoting; four ``in`` scans are far cheaper than a translate on the common clean text."""
    if "\\" in value or "\n" in value or "\r" in value or "\t" in value or "\x00" in value:
        if "\x00" in value:  # psycopg's own words, so the dead letter reads as it would with write_row
            raise psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return value


def _opt(value: str | None) -> str:
    return _NULL if value is None else _esc(value)


#: ``"YYYY-MM-DD HH:MM:SS"`` (UTC) of recent epoch seconds: a batch's outputs share a few seconds.
_SECONDS: dict[int, str] = {}
#: ``".mmm+00"`` for each millisecond: a concatenation instead of a formatted field per timestamp.
_MILLIS = [f".{milli:03d}+00" for milli in range(1000)]
_json = msgspec.json.Encoder()


def _at(ms: int) -> str:
    """A timestamptz in COPY text, exact to the millisecond (``datetime`` per value costs ≈ 3 µs)."""
    seconds, milli = divmod(ms, 1000)
    day_time = _SECONDS.get(seconds)
    if day_time is None:
        if len(_SECONDS) >= 4096:
            _SECONDS.clear()
        day_time = _SECONDS[seconds] = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")
    return day_time + _MILLIS[milli]


def _jsonb(value: Any, empty: str) -> str:
    """A jsonb column's text; msgspec is ≈ 10 times json.dumps (jsonb stores the same value either way)."""
    return _esc(_json.encode(value).decode()) if value else empty


class Rows(NamedTuple):
    """One output's line in each table's COPY text (``story_arc``: None unless a story arc)."""

    output: Output
    requests: str
    replies: str
    story_arc: str | None
    costs: str


def rows(output: Output) -> Rows:
    """The output's COPY lines (columns as in :data:`COLUMNS`).

    The hottest function of the postgres sink (≈ 30 % of its CPU before this shape): each value is
    read once into a local, enums are written as ``_value_`` (an f-string field calls the enum's
    Python-level ``__format__``), and timestamps are concatenated.
    """
    q, p = output.request, output.reply
    # Identifiers, tiers, statuses and the SLA match patterns without tabs or backslashes.
    ids = f"{p.request_id}\t{p.npc_id}\t{p.tenant_id}"
    tier = p.tier._value_
    served_tier = _NULL if p.served_tier is None else p.served_tier._value_
    replied = f"{p.replied_at_ms}\t{_at(p.replied_at_ms)}\n"
    prompt, engine, text = _esc(q.prompt), _esc(p.engine), _esc(p.text)
    sla, budget = q.sla, q.latency_budget_ms
    tools, context = _jsonb(q.tools, "[]"), _jsonb(q.context, "{}")
    chain = _jsonb([a.model_dump(mode="json") for a in p.chain], "[]")
    lat, tokens = p.latency, p.tokens
    return Rows(
        output,
        f"{q.request_id}\t{q.npc_id}\t{q.tenant_id}\t{prompt}\t{q.max_tokens}"
        f"\t{_NULL if sla is None else sla._value_}\t{_NULL if budget is None else budget}\t{tools}"
        f"\t{context}\t{q.reply_topic or _NULL}\t{_at(q.created_at_ms)}\n",
        f"{ids}\t{tier}\t{served_tier}\t{p.served_by._value_}\t{engine}\t{p.status._value_}"
        f"\t{'t' if p.late else 'f'}\t{text}\t{_opt(p.intent)}\t{_opt(p.error)}\t{p.job_id or _NULL}"
        f"\t{chain}\t{lat.queue_ms!r}\t{lat.engine_ms!r}\t{lat.total_ms!r}\t{replied}",
        f"{ids}\t{prompt}\t{text}\t{engine}\t{replied}" if is_story_arc(output) else None,
        f"{p.request_id}\t{p.tenant_id}\t{tier}\t{served_tier}\t{engine}\t{tokens.prompt}"
        f"\t{tokens.completion}\t{p.cost_usd!r}\t{replied}",
    )


def _output_of(item: Rows) -> Output:
    return item.output


def text_of(batch: Sequence[Rows]) -> dict[str, bytes]:
    """Each table's COPY text for encoded outputs of distinct requests (tables without rows left out)."""
    text = {
        "requests": "".join([r.requests for r in batch]),
        "replies": "".join([r.replies for r in batch]),
        "story_arcs": "".join([r.story_arc for r in batch if r.story_arc is not None]),
        "costs": "".join([r.costs for r in batch]),
    }
    return {table: lines.encode() for table, lines in text.items() if lines}


def copy_text(outputs: Sequence[Output]) -> dict[str, bytes]:
    """Each table's COPY text (columns as in :data:`COLUMNS`) for outputs of distinct requests."""
    return text_of([rows(output) for output in outputs])


class PostgresSink(Sink[Rows]):
    """Writes each batch in one transaction; reconnects after a lost connection."""

    name = "postgres"
    #: Connection refused, lost or timed out: psycopg's OperationalError (and SinkUnavailable).
    transient = (psycopg.OperationalError,)

    def __init__(self, url: str, *, schema: str = "public") -> None:
        self.url = url
        self.schema = schema
        self._conn: psycopg.AsyncConnection | None = None
        #: Batches that took the upsert path because some of their rows existed (replays, retries).
        self.upserts = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> PostgresSink:
        if not settings.database_url:
            raise SinkSetupError("the postgres sink needs NPCFLOW_DATABASE_URL (postgresql://…)")
        return cls(settings.database_url, schema=settings.sinks.pg_schema)

    async def _start(self) -> None:
        """Fail fast when the migrations are missing; a database that is down is waited for by writes."""
        try:
            await self._connection()
        except SinkUnavailable as exc:
            log.warning("postgres sink starting without its database (writes will retry): %s", exc)

    async def _stop(self) -> None:
        if self._conn is not None:
            await self._conn.close()

    async def _connection(self) -> psycopg.AsyncConnection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            try:
                conn = await psycopg.AsyncConnection.connect(self.url, connect_timeout=5)
            except psycopg.OperationalError as exc:
                raise SinkUnavailable(f"PostgreSQL unreachable: {exc}") from exc
            await check(conn, self.schema)
            for statement in CREATE_STAGING:
                await conn.execute(statement)  # type: ignore[arg-type]
            await conn.commit()
            self._conn = conn
        return self._conn

    def encode(self, output: Output) -> Rows:
        """The output's COPY lines, made while the runner parses (raises for a NUL in text)."""
        return rows(output)

    async def write(self, batch: Sequence[Rows | Output]) -> None:
        conn = await self._connection()
        # One output per request: one INSERT … ON CONFLICT may not update the same row twice.
        text = text_of(latest_per_request(self.encoded(batch), _output_of))
        try:
            try:
                # No savepoint: a refused row rolls the whole transaction back, which costs a
                # retried batch one more round trip and saves every batch two (SAVEPOINT, RELEASE).
                async with conn.transaction(), conn.cursor() as cur:
                    await _copy(cur, text, into=lambda table: table)
                return
            except psycopg.errors.UniqueViolation:
                self.upserts += 1  # some were written before: the idempotent path
            async with conn.transaction(), conn.cursor() as cur:
                await _copy(cur, text, into=_staging)
                for table in text:
                    await cur.execute(UPSERTS[table])  # type: ignore[arg-type]
        except psycopg.OperationalError:
            await conn.close()  # reconnect on the next try
            raise

    async def count(self) -> int:
        """Rows in ``replies`` (one per request written)."""
        conn = await self._connection()
        cur = await conn.execute("SELECT count(*) FROM replies")
        row = await cur.fetchone()
        await conn.commit()
        return int(row[0]) if row else 0


async def _copy(cur: psycopg.AsyncCursor, text: dict[str, bytes], *, into: Callable[[str], str]) -> None:
    """COPY each table's text into ``into(table)`` (the table itself, or its staging table)."""
    for table, data in text.items():
        async with cur.copy(f"COPY {into(table)} ({COLUMNS[table]}) FROM STDIN") as copy:  # type: ignore[arg-type]
            await copy.write(data)
