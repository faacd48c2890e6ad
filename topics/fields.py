"""The field types and limits every event is built from, each meaning the same in Python and JSON Schema.

Strict types (no coercion of ``"8"`` to ``8``, ``true`` is not ``1``) and regular expressions
that mean the same in Rust's regex (pydantic-core), Python and ECMA-262 (what the JSON Schema
validators of C++/C#/Go game servers use): anchors are ``^`` and ``$`` over character classes.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, Strict, StringConstraints, WithJsonSchema
from pydantic_core import PydanticCustomError

from topics.catalogue import MAX_REPLY_TOPIC_CHARS

SCHEMA_VERSION = 1
#: Largest event the router accepts, in bytes; larger bodies are dead-lettered unparsed.
MAX_EVENT_BYTES = 64 * 1024
MAX_PROMPT_CHARS = 4000
MAX_TOKENS_LIMIT = 2000
MAX_LATENCY_BUDGET_MS = 3_600_000
MAX_TIMESTAMP_MS = 2**53 - 1
#: Each string of a field error (:class:`topics.schemas.FieldError`) is cut to this many characters:
#: a field path can echo hostile keys, and a dead letter must not amplify its input
#: (:mod:`topics.rejections` holds the dead letter's own limits).
MAX_ERROR_TEXT = 200
#: An intent is a short action ("flee: run to the gate"), not dialogue.
MAX_INTENT_CHARS = 256


def cut_text(text: str, limit: int) -> str:
    """``text`` within ``limit`` characters, the cut marked with an ellipsis, for a bounded string field."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _integral_float_to_int(value: Any) -> Any:
    """JSON Schema counts ``8.0`` as an integer; accept it here too so both validators agree."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def bounded_int(ge: int = 0, le: int = MAX_TIMESTAMP_MS) -> Any:
    """A strict JSON integer in [ge, le]; integral floats such as ``8.0`` count, strings never do."""
    return Annotated[int, Strict(), Field(ge=ge, le=le), BeforeValidator(_integral_float_to_int)]


Identifier = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@/-]+$")]
RequestId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
TopicName = Annotated[str, StringConstraints(min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$")]
#: A reply topic as the schema alone can check it; the family rule (prefix, tenant) is in
#: :func:`topics.rejections.parse_request` and, for the exported schema, in
#: :func:`topics.wire_rules.add_request_rules`.
ReplyTopicName = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_REPLY_TOPIC_CHARS, pattern=r"^[A-Za-z0-9._-]+$")
]
ToolName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")]
TimestampMs = bounded_int()
ContextKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]


def _context_scalar(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise PydanticCustomError("finite_number", "context numbers must be finite (no NaN or Infinity)")
    if isinstance(value, str | int | float):  # bool is an int
        return value
    raise PydanticCustomError("scalar_type", "context values must be a string, number or boolean")


ContextValue = Annotated[
    Any,
    AfterValidator(_context_scalar),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]}),
]


def _is_schema_version(value: int) -> int:
    if value != SCHEMA_VERSION:
        raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": SCHEMA_VERSION})
    return value


#: A strict integer equal to SCHEMA_VERSION: ``true`` is not 1 here, as it is not in JSON Schema.
SchemaVersion = Annotated[
    int,
    Strict(),
    BeforeValidator(_integral_float_to_int),
    AfterValidator(_is_schema_version),
    WithJsonSchema({"type": "integer", "const": SCHEMA_VERSION, "default": SCHEMA_VERSION}),
]


class Sla(StrEnum):
    """What the game server asks for; the routing policy maps it to a tier."""

    REALTIME = "realtime"
    INTERACTIVE = "interactive"
    ASYNC = "async"


class ReplyStatus(StrEnum):
    """How a request ended; the wire value is the enum's value.

    ``accepted`` is not an end: it is the notice an asynchronous tier (Bronze on SageMaker Async)
    sends at once, carrying ``job_id``; the request's one final reply follows. New members are
    only ever appended, so the existing values never change.
    """

    OK = "ok"
    FALLBACK = "fallback"
    EXPIRED = "expired"
    ERROR = "error"
    ACCEPTED = "accepted"


class ServedBy(StrEnum):
    """What produced a reply's answer; ``none`` for expired and error replies (values only appended)."""

    ENGINE = "engine"
    CACHE = "cache"
    DEFAULT_INTENT = "default_intent"
    NONE = "none"
    #: An earlier model answer to the same (normalised) prompt, from the Redis result cache.
    RESULT_CACHE = "result_cache"
