"""Versioned SQL migrations (``infrastructure/sql/NNN_name.sql``), applied by ``npcflow db migrate``.

Each file runs once per schema, in version order, in its own transaction, recorded in
``schema_migrations``; an advisory lock makes two migrators (a deploy and a sink starting) take
turns instead of racing. Plain PostgreSQL, so the same command migrates Aurora.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from workers.sinks.base import shipped
from workers.sinks.exceptions import SinkSetupError

MIGRATIONS_DIR = shipped("sql")
#: Any fixed number: every npcflow migrator takes this lock for the duration of its transaction.
ADVISORY_LOCK = 0x6E7063666C6F77
_FILE = re.compile(r"^(\d{3,})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path


def available(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migration files, by version; a misnamed or duplicate version is an error, not skipped."""
    found: dict[int, Migration] = {}
    if not any(directory.glob("*.sql")):
        raise SinkSetupError(f"no migrations in {directory}: is npcflow installed from its repository?")
    for path in sorted(directory.glob("*.sql")):
        match = _FILE.match(path.name)
        if not match:
            raise SinkSetupError(f"{path}: migrations are named NNN_name.sql (lowercase, digits, _)")
        version = int(match.group(1))
        if version in found:
            raise SinkSetupError(f"{path}: version {version} is also {found[version].path.name}")
        found[version] = Migration(version, match.group(2), path)
    return [found[v] for v in sorted(found)]


async def _use_schema(conn: psycopg.AsyncConnection, schema: str, create: bool) -> None:
    if create:
        await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))


async def applied(conn: psycopg.AsyncConnection) -> set[int]:
    """Versions recorded in the current schema (empty when it was never migrated)."""
    cur = await conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
    row = await cur.fetchone()
    if not row or not row[0]:
        return set()
    cur = await conn.execute("SELECT version FROM schema_migrations")
    return {version for (version,) in await cur.fetchall()}


async def migrate(url: str, schema: str = "public", directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply every migration not yet recorded in ``schema``; returns the files applied now."""
    migrations = available(directory)
    done: list[str] = []
    async with await psycopg.AsyncConnection.connect(url) as conn:
        for migration in migrations:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK,))
                await _use_schema(conn, schema, create=True)
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version integer PRIMARY KEY, name text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                )
                if migration.version in await applied(conn):
                    continue
                await conn.execute(migration.path.read_text())  # type: ignore[arg-type]
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )
                done.append(migration.path.name)
    return done


async def check(conn: psycopg.AsyncConnection, schema: str) -> None:
    """Point ``conn`` at ``schema`` and make sure every migration is applied there."""
    await _use_schema(conn, schema, create=False)
    missing = [m.path.name for m in available() if m.version not in await applied(conn)]
    await conn.commit()
    if missing:
        raise SinkSetupError(
            f"PostgreSQL schema {schema!r} lacks migrations {', '.join(missing)}: run `npcflow db migrate`"
        )
