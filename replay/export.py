"""One row per recorded request, joined with its routing decision and reply, as Parquet or CSV.

Written with pyarrow (the ``replay`` extra) in row groups of ``batch_rows``: memory holds one
group, whatever the window's length. The columns are fixed (:data:`SCHEMA`), so a notebook reads
every export the same way; a part the pipeline never recorded is null.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from replay.join import Entry
from topics.catalogue import Tier
from topics.errors import UserFacingError

try:  # the `replay` extra; the report and the sandbox work without it
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pa_parquet
except ImportError:  # pragma: no cover - depends on the install
    pa = None


class ExportError(UserFacingError, ValueError):
    """The export cannot be written (format, missing extra, file)."""


def _schema() -> Any:
    string, i64, f64, boolean = pa.string(), pa.int64(), pa.float64(), pa.bool_()
    return pa.schema(
        [
            ("request_id", string),
            ("npc_id", string),
            ("tenant_id", string),
            ("received_ms", i64),
            ("partition", i64),
            ("offset", i64),
            ("created_at_ms", i64),
            ("sla", string),
            ("max_tokens", i64),
            ("latency_budget_ms", i64),
            ("tools", string),
            ("context", string),
            ("reply_topic", string),
            ("prompt", string),
            ("invalid_reason", string),
            ("recorded_outcome", string),
            ("routed_tier", string),
            ("routed_sla", string),
            ("fallback_from", string),
            ("routing_reason", string),
            ("deadline_ms", i64),
            ("decided_at_ms", i64),
            ("worker_reroutes", i64),
            ("status", string),
            ("served_by", string),
            ("served_tier", string),
            ("engine", string),
            ("late", boolean),
            ("text", string),
            ("intent", string),
            ("error", string),
            ("prompt_tokens", i64),
            ("completion_tokens", i64),
            ("queue_ms", f64),
            ("engine_ms", f64),
            ("total_ms", f64),
            ("cost_usd", f64),
            ("replied_at_ms", i64),
            ("outputs", i64),
            ("predicted_tier", string),
        ]
    )


def row(entry: Entry, predicted: Tier | str | None = "") -> dict[str, Any]:
    """The export's columns for one row; ``predicted`` "" when no candidate policy was given."""
    r, d, p = entry.request, entry.decision, entry.reply
    return {
        "request_id": entry.request_id if r else None,
        "npc_id": r.npc_id if r else None,
        "tenant_id": r.tenant_id if r else None,
        "received_ms": entry.received_ms,
        "partition": entry.partition,
        "offset": entry.offset,
        "created_at_ms": r.created_at_ms if r else None,
        "sla": r.sla.value if r and r.sla else None,
        "max_tokens": r.max_tokens if r else None,
        "latency_budget_ms": r.latency_budget_ms if r else None,
        "tools": ",".join(r.tools) if r else None,
        "context": json.dumps(r.context, sort_keys=True) if r else None,
        "reply_topic": r.reply_topic if r else None,
        "prompt": r.prompt if r else None,
        "invalid_reason": entry.invalid,
        "recorded_outcome": entry.recorded_outcome,
        "routed_tier": d.tier.value if d else None,
        "routed_sla": d.sla.value if d else None,
        "fallback_from": d.fallback_from.value if d and d.fallback_from else None,
        "routing_reason": d.reason if d else None,
        "deadline_ms": d.deadline_ms if d else None,
        "decided_at_ms": d.decided_at_ms if d else None,
        "worker_reroutes": entry.worker_reroutes,
        "status": p.status.value if p else None,
        "served_by": p.served_by.value if p else None,
        "served_tier": p.served_tier.value if p and p.served_tier else None,
        "engine": p.engine if p else None,
        "late": p.late if p else None,
        "text": p.text if p else None,
        "intent": p.intent if p else None,
        "error": p.error if p else None,
        "prompt_tokens": p.tokens.prompt if p else None,
        "completion_tokens": p.tokens.completion if p else None,
        "queue_ms": p.latency.queue_ms if p else None,
        "engine_ms": p.latency.engine_ms if p else None,
        "total_ms": p.latency.total_ms if p else None,
        "cost_usd": p.cost_usd if p else None,
        "replied_at_ms": p.replied_at_ms if p else None,
        "outputs": entry.outputs,
        "predicted_tier": (predicted.value if isinstance(predicted, Tier) else "dead_lettered")
        if predicted != ""
        else None,
    }


class Exporter:
    """``add(entry)`` per row, ``close()`` once; Parquet or CSV by the file's suffix."""

    def __init__(self, path: Path, batch_rows: int = 5000) -> None:
        if pa is None:
            raise ExportError("--export needs pyarrow: pip install 'npcflow[replay]'")
        suffix = path.suffix.lower()
        if suffix not in (".parquet", ".csv"):
            raise ExportError(f"--export {path}: name a .parquet or .csv file")
        self.path = path
        self.rows = 0
        self._batch_rows = batch_rows
        self._pending: list[dict[str, Any]] = []
        self._schema = _schema()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if suffix == ".parquet":
                self._writer: Any = pa_parquet.ParquetWriter(str(path), self._schema, compression="zstd")
            else:
                self._writer = pa_csv.CSVWriter(str(path), self._schema)
        except OSError as exc:
            raise ExportError(f"cannot write {path}: {exc.strerror or exc}") from None

    def add(self, entry: Entry, predicted: Tier | str | None = "") -> None:
        self._pending.append(row(entry, predicted))
        if len(self._pending) >= self._batch_rows:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._writer.write_table(pa.Table.from_pylist(self._pending, schema=self._schema))
            self.rows += len(self._pending)
            self._pending = []

    def close(self) -> None:
        self._flush()
        self._writer.close()
