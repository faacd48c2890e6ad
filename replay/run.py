"""One pass over a window: read, join, and hand each row to the report, the export and the sandbox.

The CLI (:mod:`replay.cli`) and the benchmark call :func:`run_replay`; nothing here parses arguments.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.config import Settings
from replay.bounds import Bounds
from replay.export import Exporter
from replay.join import Entry, Join
from replay.report import WhatIf
from replay.sandbox import Sandbox
from replay.window import WindowReader, offsets_window
from topics.catalogue import OUTPUTS, REQUESTS, ROUTING, Tier
from topics.policy import RoutingPolicy

#: Progress: (fraction of the window read or None, events read).
Progress = Callable[[float | None, int], None]


@dataclass(frozen=True)
class ReplayOptions:
    """What to replay and what to do with it; at least one of report, into, export."""

    source_prefix: str
    until_ms: int
    since_ms: int | None = None
    #: npc.requests partition → [start, end) offsets, instead of since/until for that topic.
    offsets: Mapping[int, tuple[int, int | None]] | None = None
    #: Decisions and replies are read this long past ``until`` (a reply comes after its request).
    grace_ms: int = 60_000
    #: ... and from this long before ``since`` (producers' clocks differ).
    skew_ms: int = 5_000
    policy: RoutingPolicy | None = None
    into: str | None = None
    speed: float = 1.0
    export: Path | None = None
    #: Rows held open at most by the join (NPCFLOW_REPLAY_MAX_OPEN).
    max_open: int = 100_000


def _iso(ms: int | None) -> str:
    if ms is None:
        return "start"
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def run_replay(
    settings: Settings,
    options: ReplayOptions,
    progress: Progress | None = None,
    sandbox: Sandbox | None = None,
) -> dict[str, Any]:
    """Run the replay; returns the summary (the report's JSON). ``sandbox`` overrides ``into``."""
    requests = REQUESTS.name(options.source_prefix)
    since, until = options.since_ms, options.until_ms
    if options.offsets is not None:
        since, until = await offsets_window(settings, requests, options.offsets)
    bounds = {requests: Bounds(until_ms=options.until_ms, from_ms=since, offsets=options.offsets)}
    joining = options.policy is not None or options.export is not None
    if joining:
        side = Bounds(
            until_ms=until + options.grace_ms, from_ms=None if since is None else since - options.skew_ms
        )
        bounds |= {ROUTING.name(options.source_prefix): side, OUTPUTS.name(options.source_prefix): side}
    join = (
        Join(
            requests,
            ROUTING.name(options.source_prefix),
            OUTPUTS.name(options.source_prefix),
            max_open=options.max_open,
            patience_ms=options.grace_ms + options.skew_ms,
            prefix=options.source_prefix,
            full=options.export is not None,
        )
        if joining
        else None
    )
    what_if = WhatIf(options.policy) if options.policy else None
    exporter = Exporter(options.export) if options.export else None
    if sandbox is None and options.into is not None:
        sandbox = Sandbox(settings, options.into, options.source_prefix, options.speed)

    def consume(entry: Entry) -> None:
        predicted: Tier | str | None = what_if.add(entry) if what_if else ""
        if exporter:
            exporter.add(entry, predicted)

    started = time.monotonic()
    reader = WindowReader(settings, bounds)
    # Parsing allocates millions of short-lived, acyclic objects: with the default gen-0 threshold
    # (700) the collector ran every few records and took a third of the replay's time.
    thresholds = gc.get_threshold()
    gc.set_threshold(100_000, 50, 50)
    try:
        if sandbox is not None:
            await sandbox.start()
        async with reader:
            first: int | None = None
            async for batch in reader.batches():
                for topic, records in batch:
                    if sandbox is not None and topic == requests:
                        for record in records:
                            await sandbox.send(record)
                    if join is not None:
                        join.add_many(topic, records)
                if join is not None:
                    join.advance(reader.position_ms)
                    for entry in join.ready():
                        consume(entry)
                if progress:
                    position = reader.position_ms
                    first = since if since is not None else (first or position)
                    span = until - first if first is not None else 0
                    fraction = (position - first) / span if position and first and span > 0 else None
                    progress(fraction, reader.stats.kept)
        if join is not None:
            for entry in join.close():
                consume(entry)
    finally:
        gc.set_threshold(*thresholds)
        if exporter:
            exporter.close()
        if sandbox is not None:
            await sandbox.stop()
    seconds = time.monotonic() - started
    summary: dict[str, Any] = {
        "window": {
            "since": _iso(since),
            "until": _iso(until),
            "since_ms": since,
            "until_ms": until,
            "prefix": options.source_prefix,
        },
        "read": {
            "events": reader.stats.kept,
            "fetched": reader.stats.fetched,
            "method": reader.stats.method,
            "seconds": round(seconds, 3),
            "rate": round(reader.stats.kept / seconds, 1) if seconds > 0 else None,
        },
    }
    if join is not None:
        summary["join"] = asdict(join.stats) | {"max_open": options.max_open}
    if what_if is not None:
        summary["report"] = what_if.summary()
    if exporter is not None:
        summary["export"] = {"path": str(exporter.path), "rows": exporter.rows}
    if sandbox is not None:
        summary["sandbox"] = {
            "prefix": sandbox.prefix,
            "run": sandbox.run,
            "sent": sandbox.sent,
            "invalid": sandbox.invalid,
            "speed": sandbox.speed,
        }
    return summary
