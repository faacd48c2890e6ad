"""What becomes of input the pipeline refuses: the one request parser, and the dead-letter record.

Decoding raises :class:`topics.schemas.InvalidEvent` (it lives with the events, which raise it);
this module decides what a refusal says and keeps. :func:`parse_request` is the one definition of
a valid request, and turns pydantic's errors into an :class:`InvalidEvent` whose reason names
every broken field and rule. :meth:`DeadLetter.of` records the refused bytes and that reason on a
dead-letter topic, bounded whatever the input, so a hostile event cannot make a dead letter larger
than a Kafka message. The limits below are that bound.
"""

from __future__ import annotations

import base64
import time
from typing import Annotated, ClassVar, Literal

from pydantic import Field, StringConstraints, ValidationError

from topics.catalogue import reply_topic_problem
from topics.fields import TimestampMs, TopicName, bounded_int, cut_text
from topics.schemas import Event, FieldError, InvalidEvent, Request

#: Dead letters keep at most this much of the original event.
MAX_DEAD_LETTER_ORIGINAL = 256 * 1024
#: A dead letter lists at most this many field errors (``errors_omitted`` counts the rest), each
#: string in them cut to MAX_ERROR_TEXT, so a dead letter never amplifies its input: its size is
#: at most 4/3 of the original (base64) plus DEAD_LETTER_OVERHEAD_BYTES.
MAX_DEAD_LETTER_ERRORS = 20
MAX_REASON_CHARS = 4000
DEAD_LETTER_OVERHEAD_BYTES = 24 * 1024


def field_errors(exc: ValidationError) -> list[FieldError]:
    """Pydantic's errors as (field path, rule, message) triples."""
    out = []
    for err in exc.errors(include_url=False):
        path = ".".join(str(p) for p in err["loc"]) or "(body)"
        out.append(FieldError.cut(path, err["type"], err["msg"]))
    return out


def parse_request(raw: bytes | None, prefix: str | None = None) -> Request:
    """Decode and validate an intake event under a topic prefix; failures become :class:`InvalidEvent`.

    This is the one definition of a valid request (router and workers call it): the exported
    JSON Schema for the same prefix accepts exactly these events, but for the cross-field
    tenant rule of ``reply_topic`` and the byte limit, which its description states. With
    ``prefix`` None the reply-topic family is not checked (reading recorded traffic).
    """
    try:
        request = Request.from_bytes(raw)
    except ValidationError as exc:
        errors = field_errors(exc)
        shown = "; ".join(f"{e.field}: {e.message} [{e.rule}]" for e in errors[:MAX_DEAD_LETTER_ERRORS])
        omitted = len(errors) - MAX_DEAD_LETTER_ERRORS
        more = f"; and {omitted} more" if omitted > 0 else ""
        raise InvalidEvent(f"invalid request: {shown}{more}", errors) from None
    if request.reply_topic is not None and prefix is not None:
        problem = reply_topic_problem(request.reply_topic, prefix, request.tenant_id)
        if problem:
            error = FieldError.cut("reply_topic", "reply_topic_family", problem)
            raise InvalidEvent(f"invalid request: reply_topic: {problem} [reply_topic_family]", [error])
    return request


class DeadLetter(Event):
    """An event that could not be accepted, with the original bytes (base64) and where it came from."""

    event_name: ClassVar[str] = "dead_letter"
    reason: Annotated[str, StringConstraints(max_length=MAX_REASON_CHARS)]
    errors: Annotated[list[FieldError], Field(max_length=MAX_DEAD_LETTER_ERRORS)] = Field(
        default_factory=list
    )
    errors_omitted: bounded_int() = Field(default=0, description="Field errors beyond the first 20.")
    original_b64: str = Field(description="The original bytes, base64; cut to 256 KiB when larger.")
    original_size: bounded_int()
    original_truncated: bool = False
    original_null: bool = Field(
        default=False, description="The record's value was null (a tombstone), not an empty byte string."
    )
    source_topic: TopicName
    source_partition: bounded_int()
    source_offset: bounded_int()
    stage: Literal["router", "worker", "sink"]
    failed_at_ms: TimestampMs

    def original(self) -> bytes:
        return base64.b64decode(self.original_b64)

    @classmethod
    def of(
        cls,
        raw: bytes | None,
        reason: str,
        topic: str,
        partition: int,
        offset: int,
        errors: list[FieldError] | None = None,
        stage: Literal["router", "worker", "sink"] = "router",
    ) -> DeadLetter:
        """The record for one rejected event: its bytes (cut to fit a Kafka message) and its origin.

        Bounded whatever the input: at most MAX_DEAD_LETTER_ERRORS errors with their strings cut,
        the reason cut, so its size is ≤ 4/3 · len(raw) + DEAD_LETTER_OVERHEAD_BYTES.
        """
        body = raw or b""
        kept = body[:MAX_DEAD_LETTER_ORIGINAL]
        errors = errors or []
        return cls(
            reason=cut_text(reason, MAX_REASON_CHARS),
            errors=[FieldError.cut(e.field, e.rule, e.message) for e in errors[:MAX_DEAD_LETTER_ERRORS]],
            errors_omitted=max(0, len(errors) - MAX_DEAD_LETTER_ERRORS),
            original_b64=base64.b64encode(kept).decode(),
            original_size=len(body),
            original_truncated=len(kept) < len(body),
            original_null=raw is None,
            source_topic=topic,
            source_partition=partition,
            source_offset=offset,
            stage=stage,
            failed_at_ms=int(time.time() * 1000),
        )


__all__ = [
    "DEAD_LETTER_OVERHEAD_BYTES",
    "MAX_DEAD_LETTER_ERRORS",
    "MAX_DEAD_LETTER_ORIGINAL",
    "MAX_REASON_CHARS",
    "DeadLetter",
    "field_errors",
    "parse_request",
]
