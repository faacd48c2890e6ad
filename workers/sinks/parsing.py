"""One record of ``npc.outputs`` as the sink runner holds it: validated, encoded for its store, or refused.

Parsing is the runner's main CPU cost (validation about two thirds, the sink's ``encode`` the
rest; docs/architecture.md, "Sinks"), done as records arrive so that it overlaps the batch in flight.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError

from topics.rejections import field_errors
from topics.schemas import FieldError, InvalidEvent, Output
from workers.sinks.base import Sink


class ParsedRecord(NamedTuple):
    """One consumed record: its output as the sink encoded it, or why there is none (dead-lettered).

    A tuple, not a dataclass: one is built per record on the runner's hot path.
    """

    record: ConsumerRecord
    value: Any
    reason: str = ""
    errors: tuple[FieldError, ...] = ()


def parse_record(record: ConsumerRecord, sink: Sink) -> ParsedRecord:
    """Validate one record as an :class:`Output` and encode it for ``sink``.

    An encoding error is the record's for good (``encode`` is deterministic): it is dead-lettered
    with the reason a failed write of that record alone would give, without retries.
    """
    try:
        output = Output.from_bytes(record.value)
    except ValidationError as exc:
        errors = field_errors(exc)
        shown = "; ".join(f"{e.field}: {e.message}" for e in errors[:5])
        return ParsedRecord(record, None, f"not a valid output: {shown}", tuple(errors))
    except InvalidEvent as exc:
        return ParsedRecord(record, None, f"not a valid output: {exc.reason}", tuple(exc.errors))
    try:
        return ParsedRecord(record, sink.encode(output))
    except Exception as exc:
        return ParsedRecord(record, None, f"{sink.name} sink: {type(exc).__name__}: {exc}")
