"""The events on the wire, defined once as pydantic models and exported as JSON Schema / AsyncAPI.

Validation is strict on purpose: a game server written in C++ or C# generates its types from
the exported JSON Schema, so the Python side must accept exactly what that schema accepts —
no silent coercion of ``"8"`` to ``8``, no unknown fields. The field types and limits are in
:mod:`topics.fields`; what becomes of an event that fails here (the dead letter, the one request
parser) is :mod:`topics.rejections`.

:class:`InvalidEvent` and the :class:`FieldError` it carries are defined here, with the events:
decoding raises them (:meth:`Event.from_bytes` refuses a null, empty, oversized or non-UTF-8 body
before pydantic sees it), so every reader of an event can name the failure without importing the
rejection side, which itself imports these events.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from topics.catalogue import Tier
from topics.fields import (
    MAX_ERROR_TEXT,
    MAX_EVENT_BYTES,
    MAX_INTENT_CHARS,
    MAX_LATENCY_BUDGET_MS,
    MAX_PROMPT_CHARS,
    MAX_TOKENS_LIMIT,
    SCHEMA_VERSION,
    ContextKey,
    ContextValue,
    Identifier,
    ReplyStatus,
    ReplyTopicName,
    RequestId,
    SchemaVersion,
    ServedBy,
    Sla,
    TimestampMs,
    ToolName,
    bounded_int,
    cut_text,
)


class Event(BaseModel):
    """Base of every event on the wire: strict, closed, immutable JSON objects."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    event_name: ClassVar[str]
    #: Largest body accepted by :meth:`from_bytes` (``None``: no limit beyond the broker's).
    max_bytes: ClassVar[int | None] = None
    schema_version: SchemaVersion = SCHEMA_VERSION

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> Self:
        """Parse and validate one event; raises :class:`InvalidEvent` with a readable reason."""
        return cls.model_validate_json(_decode_body(raw, cls.max_bytes))


#: One broken rule of a refused event. No class docstring: pydantic would export it as the
#: schema's description, and the exported documents are a contract.
class FieldError(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    field: Annotated[str, StringConstraints(max_length=MAX_ERROR_TEXT)]
    rule: Annotated[str, StringConstraints(max_length=MAX_ERROR_TEXT)]
    message: Annotated[str, StringConstraints(max_length=MAX_ERROR_TEXT)]

    @classmethod
    def cut(cls, field: str, rule: str, message: str) -> FieldError:
        """One error with each string cut to MAX_ERROR_TEXT (a field path can echo hostile keys)."""
        return cls(
            field=cut_text(field, MAX_ERROR_TEXT),
            rule=cut_text(rule, MAX_ERROR_TEXT),
            message=cut_text(message, MAX_ERROR_TEXT),
        )


class InvalidEvent(ValueError):
    """An event the pipeline refuses; ``reason`` is one line naming each bad field and its rule.

    Here, not in :mod:`topics.rejections`, because decoding an event raises it (``from_bytes``
    below); ``parse_request`` there raises it too, for a request's field and reply-topic rules.
    """

    def __init__(self, reason: str, errors: list[FieldError] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.errors = errors or []


def _decode_body(raw: bytes | None, max_bytes: int | None) -> str:
    if raw is None:
        raise InvalidEvent(
            "null value (a tombstone): expected a JSON object",
            [FieldError(field="", rule="null_value", message="")],
        )
    if not raw:
        raise InvalidEvent(
            "empty body: expected a JSON object", [FieldError(field="", rule="empty", message="")]
        )
    if max_bytes is not None and len(raw) > max_bytes:
        raise InvalidEvent(
            f"event is {len(raw)} bytes, over the {max_bytes}-byte limit",
            [FieldError(field="", rule="max_event_bytes", message=f"{len(raw)} > {max_bytes}")],
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEvent(
            f"body is not valid UTF-8 (byte {exc.start}: {exc.reason})",
            [FieldError(field="", rule="utf8", message=exc.reason)],
        ) from None


class Request(Event):
    """A game server asks one NPC to think: intake on ``npc.requests``, key = npc_id."""

    event_name: ClassVar[str] = "request"
    max_bytes: ClassVar[int | None] = MAX_EVENT_BYTES
    request_id: RequestId
    npc_id: Identifier
    tenant_id: Identifier = Field(description="The game server (tenant) that sent the request.")
    prompt: Annotated[str, StringConstraints(min_length=1, max_length=MAX_PROMPT_CHARS)]
    max_tokens: bounded_int(1, MAX_TOKENS_LIMIT)
    sla: Sla | None = Field(default=None, description="Omit to let the router classify by budget and size.")
    latency_budget_ms: bounded_int(1, MAX_LATENCY_BUDGET_MS) | None = None
    tools: Annotated[list[ToolName], Field(max_length=8)] = Field(default_factory=list)
    context: Annotated[dict[ContextKey, ContextValue], Field(max_length=32)] = Field(default_factory=dict)
    created_at_ms: TimestampMs
    reply_topic: ReplyTopicName | None = Field(
        default=None,
        description="Defaults to npc.replies. Otherwise npc.replies.<tenant_id>[.<name>], created beforehand "
        "(`npcflow topics create --reply-topic`): the tenant segment must equal tenant_id, a rule "
        "JSON Schema cannot express across fields; the router checks it.",
    )


class TokenUsage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    prompt: bounded_int() = 0
    completion: bounded_int() = 0


class Latency(BaseModel):
    """Where the time went, in milliseconds, so a slow reply can be blamed on the right hop."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    queue_ms: Annotated[float, Field(ge=0)] = 0.0
    engine_ms: Annotated[float, Field(ge=0)] = 0.0
    total_ms: Annotated[float, Field(ge=0)] = 0.0


class TierAttempt(BaseModel):
    """One tier a request went through: served it, failed (and why), or was skipped or shed."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    tier: Tier
    outcome: Literal["served", "failed", "skipped", "shed"]
    reason: Annotated[str, StringConstraints(max_length=300)] = ""


class ToolCall(BaseModel):
    """One MCP tool call made for a request's ``tools``: which, how it ended, how long it took."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    tool: ToolName = Field(description="The request's tool (game_state_query, rag_search).")
    call: ToolName = Field(description="The MCP tool called for it (query_npc_state, rag_search, ...).")
    outcome: Literal["ok", "error", "timeout", "unavailable", "refused"]
    ms: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    error: Annotated[str, StringConstraints(max_length=300)] = ""


#: A request passes through at most every tier once (and a Gold refresh through Silver's engine).
MAX_CHAIN = 6


class Reply(Event):
    """Exactly one per accepted request, on the request's reply topic, key = request_id.

    An asynchronous tier may send an ``accepted`` notice (with ``job_id``) before it; a notice is
    never the final reply.
    """

    event_name: ClassVar[str] = "reply"
    request_id: RequestId
    npc_id: Identifier
    tenant_id: Identifier
    tier: Tier
    served_by: ServedBy = Field(description="What produced the answer; none for expired and error replies.")
    engine: Annotated[str, StringConstraints(max_length=128)] = ""
    status: ReplyStatus
    late: bool = Field(default=False, description="The result arrived after the request's deadline.")
    text: Annotated[str, StringConstraints(max_length=64_000)] = ""
    intent: Annotated[str, StringConstraints(max_length=MAX_INTENT_CHARS)] | None = None
    intent_age_ms: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = Field(
        default=None, description="Age of the intent that answered, when served_by is cache."
    )
    tokens: TokenUsage = Field(default_factory=TokenUsage)
    latency: Latency = Field(default_factory=Latency)
    cost_usd: Annotated[float, Field(ge=0)] = 0.0
    error: Annotated[str, StringConstraints(max_length=2000)] | None = None
    served_tier: Tier | None = Field(
        default=None,
        description="The tier whose engine produced the answer (differs from tier after a fallback); "
        "absent when nothing answered.",
    )
    chain: Annotated[list[TierAttempt], Field(max_length=MAX_CHAIN)] = Field(
        default_factory=list,
        description="Every tier the request went through, in order, and why it moved on.",
    )
    replied_at_ms: TimestampMs
    job_id: RequestId | None = Field(
        default=None,
        description="The asynchronous job serving the request (status accepted, and its final reply); "
        "look it up with `npcflow job get`.",
    )
    tools: Annotated[list[ToolCall], Field(max_length=32)] | None = Field(
        default=None,
        description="The tool calls made for the request's tools; a failed or slow one gave no context.",
    )


class Output(Event):
    """A served request with its reply, for the sinks (cache, Aurora, S3, OpenSearch); key = request_id."""

    event_name: ClassVar[str] = "output"
    request: Request
    reply: Reply

    @staticmethod
    def wire(request: bytes, reply: bytes) -> bytes:
        """An output's JSON from its parts' JSON, so a reply already serialised for its own record
        is not serialised again (the worker's hot path)."""
        return b'{"schema_version":%d,"request":%s,"reply":%s}' % (SCHEMA_VERSION, request, reply)


class RoutingDecision(Event):
    """Why a request went where it went: one record per routed request."""

    event_name: ClassVar[str] = "routing_decision"
    request_id: RequestId
    npc_id: Identifier
    tenant_id: Identifier
    tier: Tier
    sla: Sla
    reason: Annotated[str, StringConstraints(max_length=500)]
    deadline_ms: TimestampMs
    decided_at_ms: TimestampMs
    fallback_from: Tier | None = Field(
        default=None, description="Set when the request was diverted from this tier (breaker, shedding)."
    )
    stage: Literal["router", "worker"] = "router"


JsonValue = Any


class GameStateUpdate(Event):
    """The latest state of one game entity; ``game.state`` is compacted on entity_id."""

    event_name: ClassVar[str] = "game_state_update"
    entity_id: Identifier
    world_id: Identifier
    kind: Literal["npc", "player", "item", "region", "quest"]
    state: Annotated[dict[str, JsonValue], Field(max_length=256)]
    version: bounded_int()
    updated_at_ms: TimestampMs


class Intent(Event):
    """An NPC's current intent (the Gold model's short action); ``npc.intents`` is compacted on npc_id.

    Written by the Gold worker for every model result (docs/architecture.md, "Gold's two paths")
    and by game servers through ``IntentCache.update_intent``; a null value (tombstone) forgets it.
    """

    event_name: ClassVar[str] = "intent"
    npc_id: Identifier
    intent: Annotated[str, StringConstraints(min_length=1, max_length=MAX_INTENT_CHARS)]
    generated_at_ms: TimestampMs
    request_id: RequestId | None = Field(
        default=None, description="The request whose model call produced it."
    )
    engine: Annotated[str, StringConstraints(max_length=128)] = Field(
        default="", description="The engine that produced it; 'game' when a game server set it."
    )


class ActiveNpc(Event):
    """An NPC in a game's active set: Gold re-thinks its intent at 1-2 Hz until ``lease_until_ms``.

    ``npc.active`` is compacted on npc_id; a null value (tombstone) takes the NPC out of the set.
    Written by game servers (``IntentCache.watch``, renewed while watched) and by routers (every
    Gold request leases its NPC); read by the Gold workers' refresh scheduler
    (docs/architecture.md, "Keeping the active set fresh").
    """

    event_name: ClassVar[str] = "active_npc"
    npc_id: Identifier
    tenant_id: Identifier = Field(description="Who asked: the refreshes run under this tenant's share.")
    archetype: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = Field(
        default=None, description="The NPC's archetype, passed to the model as context.archetype."
    )
    prompt: Annotated[str, StringConstraints(min_length=1, max_length=MAX_PROMPT_CHARS)] | None = Field(
        default=None,
        description="The situation each refresh asks the model about (a Gold request's prompt); "
        "none: a generic 'what do you do next'.",
    )
    lease_until_ms: TimestampMs = Field(
        description="The NPC leaves the set at this time (epoch ms) unless announced again."
    )
    announced_at_ms: TimestampMs


__all__ = [
    "MAX_CHAIN",
    "ActiveNpc",
    "Event",
    "FieldError",
    "GameStateUpdate",
    "Intent",
    "InvalidEvent",
    "JsonValue",
    "Latency",
    "Output",
    "Reply",
    "Request",
    "RoutingDecision",
    "TierAttempt",
    "TokenUsage",
    "ToolCall",
]
