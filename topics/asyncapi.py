"""The AsyncAPI 3.0 document of the catalogue: what a game server in another language builds on.

Channels are the catalogue's topics; each message states its payload (the event's JSON Schema),
its Kafka headers, its key (the Kafka message binding) and, where it has one, its correlation id
(``request_id``). Sending a request names the reply address the way the router reads it: the
``reply_topic`` field of the payload. The document is checked against the official AsyncAPI 3.0
JSON Schema in ``tests/unit/test_asyncapi.py``.

The header names are the wire contract of ``topics/headers.py``, which every writer of a header
uses; that test also checks the headers the code writes against these schemas.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from pydantic.json_schema import models_json_schema

from topics.catalogue import (
    ACTIVE,
    CATALOGUE,
    DLQ,
    GAME_STATE,
    INTENTS,
    OUTPUTS,
    REPLIES,
    REQUESTS,
    ROUTING,
    SINK_DLQ,
    TIER_TOPICS,
    Tier,
    TopicSpec,
)
from topics.fields import SCHEMA_VERSION
from topics.headers import (
    ATTEMPT_HEADER,
    CHAIN_HEADER,
    DEADLINE_HEADER,
    FALLBACK_HEADERS,
    FROM_HEADER,
    ORIGINAL_DEADLINE_HEADER,
    REASON_HEADER,
    REFRESH_HEADER,
    REPLAY_OF_HEADER,
    TIER_HEADER,
)
from topics.rejections import DeadLetter
from topics.schemas import (
    MAX_CHAIN,
    ActiveNpc,
    Event,
    GameStateUpdate,
    Intent,
    Output,
    Reply,
    Request,
    RoutingDecision,
)
from topics.wire_rules import WIRE_RULES, add_request_rules

KAFKA_BINDING_VERSION = "0.5.0"

#: Every event the catalogue's topics carry, in the order the exported documents list them (the
#: components here, one JSON Schema file each in :mod:`topics.export`). Here rather than with the
#: models because the dead letter lives with the rejection side, which imports the events.
EVENTS: tuple[type[Event], ...] = (
    Request,
    Reply,
    Output,
    RoutingDecision,
    DeadLetter,
    GameStateUpdate,
    Intent,
    ActiveNpc,
)

#: Consumer settings for an external client's reply consumer. Kafka answers a parked fetch as soon as
#: a record arrives, so the fetch wait is ours (NPCFLOW_FETCH_MAX_WAIT_MS' default), not a poll.
CONSUMER_SETTINGS = {
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 1500,
    "fetch.wait.max.ms": 500,
    "enable.auto.commit": False,
    "subscription": "assign your own reply topic's partitions at OFFSET_END before the first request, "
    "or subscribe to it by its exact name; never a regex (a regex subscription rebalances whenever "
    "any tenant's reply topic appears)",
}

FALLBACK_ATTEMPT_HEADER, FALLBACK_FROM_HEADER = ATTEMPT_HEADER, FROM_HEADER
FALLBACK_REASON_HEADER, FALLBACK_CHAIN_HEADER = REASON_HEADER, CHAIN_HEADER

_EPOCH_MS = {"type": "string", "pattern": "^[0-9]{1,16}$"}
_TIER = {"type": "string", "enum": [t.value for t in Tier]}

#: Headers of a request a game server produces to ``npc.requests``: none are needed.
INTAKE_HEADERS: dict[str, Any] = {
    "type": "object",
    "description": "A game server sets none; the router routes by the payload and ignores other headers.",
    "properties": {
        REPLAY_OF_HEADER: {
            "type": "string",
            "description": "Set by `npcflow replay` on a sandbox's intake only: the recorded request_id "
            "this request replays (its own request_id is new).",
        },
    },
}
#: Headers of a request on a tier topic, as the router (or a fallback) wrote them.
ROUTED_HEADERS: dict[str, Any] = {
    "type": "object",
    "description": "Values are ASCII (the reason and chain UTF-8). A request carrying the fallback "
    "headers was handed on by a tier that could not answer in time; without them it is a first attempt.",
    "required": [DEADLINE_HEADER, TIER_HEADER],
    "properties": {
        DEADLINE_HEADER: {
            **_EPOCH_MS,
            "description": "The absolute deadline, epoch milliseconds. A worker never calls the engine "
            "for a request past it: it replies expired. A fallback sets the later of the original "
            "deadline and now + the next tier's budget.",
        },
        TIER_HEADER: {**_TIER, "description": "The tier the request was sent to."},
        REFRESH_HEADER: {
            "type": "string",
            "const": "1",
            "description": "Gold only: a model refresh of the NPC's intent. The worker writes the new "
            "intent to npc.intents and sends no reply (the router already answered).",
        },
        FALLBACK_ATTEMPT_HEADER: {
            "type": "string",
            "pattern": "^[1-9][0-9]*$",
            "description": "How many tiers gave up before this one (1, 2, …).",
        },
        FALLBACK_FROM_HEADER: {**_TIER, "description": "The tier that gave up."},
        FALLBACK_REASON_HEADER: {"type": "string", "maxLength": 300, "description": "Why, in short."},
        FALLBACK_CHAIN_HEADER: {
            "type": "string",
            "contentMediaType": "application/json",
            "description": f"A JSON list of TierAttempt (components/schemas/TierAttempt), at most "
            f"{MAX_CHAIN}: every tier tried so far and its outcome.",
        },
        ORIGINAL_DEADLINE_HEADER: {**_EPOCH_MS, "description": "The request's first deadline, epoch ms."},
    },
    "dependencies": {FALLBACK_ATTEMPT_HEADER: [h for h in FALLBACK_HEADERS if h != FALLBACK_ATTEMPT_HEADER]},
}

#: Where a topic's key comes from, when it is not the payload field named like the key.
_KEY_FIELDS: dict[tuple[str, str], tuple[str, ...]] = {
    ("Output", "request_id"): ("request", "request_id"),
    ("DeadLetter", "source"): ("source_topic",),
}
#: Keys that are not in the payload at all.
_OTHER_KEYS = {
    "sink": {
        "type": "string",
        "description": "The name of the sink that gave up (postgres, s3, opensearch, redis).",
    }
}
#: Where a message's request_id is (components/correlationIds): the field that ties a request, its
#: reply, its routing decision and its output together.
_CORRELATION = {
    "Request": "requestId",
    "Reply": "requestId",
    "RoutingDecision": "requestId",
    "Output": "outputRequestId",
}
CORRELATION_IDS = {
    "requestId": {
        "description": "request_id: a request, its reply, its routing decision and its output share "
        "it; a reply whose request_id was already seen is a duplicate (delivery is at-least-once).",
        "location": "$message.payload#/request_id",
    },
    "outputRequestId": {
        "description": "The served request's request_id.",
        "location": "$message.payload#/request/request_id",
    },
}
_COMPACTED_NOTE = {
    GAME_STATE.base: "A null value (tombstone) deletes the entity.",
    INTENTS.base: "A null value (tombstone) forgets the NPC: its default intent applies.",
    ACTIVE.base: "A null value (tombstone) takes the NPC out of the active set.",
}


def _lower_first(name: str) -> str:
    return name[0].lower() + name[1:]


def _message_id(spec: TopicSpec) -> str:
    """One message per payload, key and header set: a routed request is not an intake request."""
    if spec in TIER_TOPICS.values():
        return "routedRequest"
    if spec is SINK_DLQ:
        return "sinkDeadLetter"
    return _lower_first(spec.message)


def _channel_id(spec: TopicSpec) -> str:
    return spec.base.replace(".", "_")


def _field_schema(schemas: dict[str, Any], model: str, path: tuple[str, ...]) -> dict[str, Any]:
    """The JSON Schema of ``model``'s field at ``path``, following component references."""
    node: dict[str, Any] = schemas[model]
    for part in path:
        node = node["properties"][part]
        if "$ref" in node:
            node = schemas[node["$ref"].rsplit("/", 1)[1]]
    return {k: v for k, v in node.items() if k not in ("title", "default")}


def _key_schema(schemas: dict[str, Any], spec: TopicSpec) -> dict[str, Any]:
    if spec.key in _OTHER_KEYS:
        return dict(_OTHER_KEYS[spec.key])
    path = _KEY_FIELDS.get((spec.message, spec.key), (spec.key,))
    return {
        **_field_schema(schemas, spec.message, path),
        "description": f"The payload's {'.'.join(path)}, UTF-8: Kafka partitions by it"
        + (" and compacts on it." if spec.compacted else "."),
    }


def _message(schemas: dict[str, Any], spec: TopicSpec) -> dict[str, Any]:
    model = next(m for m in EVENTS if m.__name__ == spec.message)
    summary = (model.__doc__ or "").strip().splitlines()[0]
    message: dict[str, Any] = {
        "name": _message_id(spec),
        "title": spec.message,
        "summary": summary,
        "contentType": "application/json",
    }
    if spec is REQUESTS:
        message["headers"] = {"$ref": "#/components/schemas/IntakeHeaders"}
    elif spec in TIER_TOPICS.values():
        message["headers"] = {"$ref": "#/components/schemas/RoutedRequestHeaders"}
        message["summary"] = (
            "A request as routed to a tier: the intake's original bytes, with the deadline headers."
        )
    elif spec is SINK_DLQ:
        message["summary"] = (
            "An output a sink could not write for good, with the reason (key = the sink's name)."
        )
    message["payload"] = {"$ref": f"#/components/schemas/{spec.message}"}
    if spec.message in _CORRELATION:
        message["correlationId"] = {"$ref": f"#/components/correlationIds/{_CORRELATION[spec.message]}"}
    if spec.base in _COMPACTED_NOTE:
        message["description"] = _COMPACTED_NOTE[spec.base]
    message["bindings"] = {
        "kafka": {"key": _key_schema(schemas, spec), "bindingVersion": KAFKA_BINDING_VERSION}
    }
    return message


def _kafka_topic_config(compacted: bool, retention_ms: int | None) -> dict[str, Any]:
    if compacted:
        return {"cleanup.policy": ["compact"]}
    return {"cleanup.policy": ["delete"], "retention.ms": retention_ms}


def _ref(channel_id: str, message_id: str) -> dict[str, str]:
    return {"$ref": f"#/channels/{channel_id}/messages/{message_id}"}


def _operations() -> dict[str, Any]:
    def op(action: str, spec: TopicSpec, summary: str) -> dict[str, Any]:
        channel_id = _channel_id(spec)
        return {
            "action": action,
            "channel": {"$ref": f"#/channels/{channel_id}"},
            "summary": summary,
            "messages": [_ref(channel_id, _message_id(spec))],
        }

    send_request = op("send", REQUESTS, "A game server submits an NPC request (key = npc_id).")
    send_request["reply"] = {
        "address": {
            "location": "$message.payload#/reply_topic",
            "description": "Exactly one reply per accepted request goes to the topic the request names "
            f"in reply_topic ({REPLIES.base} when it names none), keyed by request_id.",
        },
        "channel": {"$ref": "#/channels/requested_reply_topic"},
        "messages": [_ref("requested_reply_topic", "reply")],
    }
    operations = {
        "sendRequest": send_request,
        "receiveReply": op("receive", REPLIES, "A game server reads replies (key = request_id)."),
        "receiveTenantReply": {
            "action": "receive",
            "channel": {"$ref": "#/channels/npc_replies_tenant"},
            "summary": "A game server reads the replies on its own reply topic.",
            "messages": [_ref("npc_replies_tenant", "reply")],
        },
        "receiveOutput": op("receive", OUTPUTS, "Sinks and analysts read served requests."),
        "receiveRoutingDecision": op("receive", ROUTING, "Ops read why each request went where."),
        "receiveDeadLetter": op("receive", DLQ, "Ops read rejected events with their reason."),
        "receiveSinkDeadLetter": op("receive", SINK_DLQ, "Ops read outputs a sink could not write."),
        "sendGameState": op("send", GAME_STATE, "A game server publishes entity state (compacted)."),
        "receiveIntent": op(
            "receive",
            INTENTS,
            "A game server follows npc.intents from the beginning (compacted, key = npc_id) into a near "
            "cache and reads it every frame; an intent older than the intent TTL counts as absent.",
        ),
        "sendIntent": op(
            "send",
            INTENTS,
            "A game server sets an NPC's intent itself (engine 'game'); Gold workers publish the model's.",
        ),
        "sendActiveNpc": op(
            "send", ACTIVE, "A game server names the NPCs whose intents Gold keeps fresh (compacted)."
        ),
        "receiveActiveNpc": op("receive", ACTIVE, "Gold workers refresh the active NPCs' intents."),
    }
    for tier, spec in TIER_TOPICS.items():
        operations[f"receive{tier.value.title()}Request"] = op(
            "receive", spec, f"The {tier.value} tier worker consumes its routed requests."
        )
    return operations


def asyncapi_document(prefix: str = "") -> dict[str, Any]:
    """An AsyncAPI 3.0 document: channels are topics, messages reference shared component schemas."""
    _, defs = models_json_schema(
        [(m, "validation") for m in EVENTS], ref_template="#/components/schemas/{model}"
    )
    schemas = defs["$defs"]
    add_request_rules(schemas["Request"], prefix)
    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    for spec in CATALOGUE:
        message_id = _message_id(spec)
        messages.setdefault(message_id, _message(schemas, spec))
        channels[_channel_id(spec)] = {
            "address": spec.name(prefix),
            "description": spec.purpose,
            "messages": {message_id: {"$ref": f"#/components/messages/{message_id}"}},
            "bindings": {
                "kafka": {
                    "topic": spec.name(prefix),
                    "partitions": spec.partitions,
                    "topicConfiguration": _kafka_topic_config(spec.compacted, spec.retention_ms),
                    "bindingVersion": KAFKA_BINDING_VERSION,
                }
            },
        }
    reply_messages = {"reply": {"$ref": "#/components/messages/reply"}}
    channels["npc_replies_tenant"] = {
        "address": f"{REPLIES.name(prefix)}.{{tenant}}",
        "title": "A tenant's own reply topics",
        "description": "Replies to requests that name reply_topic npc.replies.<tenant_id>[.<name>] "
        "(the {tenant} parameter may end in .<name>). Workers never create these topics: a game "
        "server registers its own with `npcflow topics create --reply-topic NAME` before naming it; a "
        "request naming a missing one is dead-lettered. Read it by its exact name.",
        "parameters": {"tenant": {"description": "tenant_id, optionally followed by .<name>"}},
        "messages": reply_messages,
        "bindings": {"kafka": {"partitions": REPLIES.partitions, "bindingVersion": KAFKA_BINDING_VERSION}},
    }
    channels["requested_reply_topic"] = {
        "address": None,
        "title": "The reply topic a request named",
        "description": f"Known at run time only: the request's reply_topic ({REPLIES.name(prefix)} or "
        "one of the tenant's own). The reply of sendRequest.",
        "messages": reply_messages,
    }
    channels[_channel_id(DLQ)]["description"] = (
        f"{DLQ.purpose} One DeadLetter per rejected event: the reason naming each field and rule, at "
        "most 20 field errors (errors_omitted counts the rest), the original bytes in base64 "
        "(original_null: the record was a tombstone), and the source topic, partition and offset."
    )
    schemas["IntakeHeaders"] = INTAKE_HEADERS
    schemas["RoutedRequestHeaders"] = ROUTED_HEADERS
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "npcflow",
            "version": metadata.version("npcflow"),
            "description": "Kafka topics and JSON events of the npcflow NPC inference pipeline. "
            f"Event schema version {SCHEMA_VERSION}. Each message gives its Kafka key (bindings.kafka.key) "
            f"and headers; a routed request's absolute deadline is the `{DEADLINE_HEADER}` header. "
            f"{WIRE_RULES}",
            "x-consumer-settings": CONSUMER_SETTINGS,
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": _operations(),
        "components": {
            "messages": messages,
            "schemas": schemas,
            "correlationIds": CORRELATION_IDS,
        },
    }
