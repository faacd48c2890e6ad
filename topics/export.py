"""Export the event schemas for game-server teams that do not write Python.

One JSON Schema (draft 2020-12) per event, plus an AsyncAPI 3 document describing every topic
of the catalogue, the message it carries and who sends or receives it, so a C++/C#/Go team can
generate its own types and clients from files instead of reading our code.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from pydantic.json_schema import models_json_schema

from topics.catalogue import (
    ACTIVE,
    CATALOGUE,
    DLQ,
    GAME_STATE,
    OUTPUTS,
    REPLIES,
    REQUESTS,
    ROUTING,
    TIER_TOPICS,
    reply_topic_pattern,
)
from topics.headers import DEADLINE_HEADER
from topics.schemas import EVENTS, MAX_EVENT_BYTES, SCHEMA_VERSION, Event, Request

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

#: Consumer settings that work for an external client on the embedded broker (and on real Kafka).
CONSUMER_SETTINGS = {
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 1500,
    "fetch.wait.max.ms": 5,
    "enable.auto.commit": False,
    "subscription": "assign or subscribe to your own reply topic by its exact name, never a regex "
    "(a regex subscription rebalances whenever any tenant's reply topic appears)",
}
#: What the router enforces beyond the field rules, stated for schema-only clients.
WIRE_RULES = (
    f"The UTF-8 JSON body of a request is at most {MAX_EVENT_BYTES} bytes. Numbers are finite "
    "(JSON has no NaN or Infinity; a parser that accepts them must not send them). reply_topic is "
    "npc.replies or npc.replies.<tenant_id>[.<name>] with the tenant segment equal to tenant_id "
    "(JSON Schema cannot compare fields; the router checks it) and the topic created beforehand. "
    "Patterns are ECMA-262 regular expressions without flags; `$` is the end of the string."
)


def event_json_schema(model: type[Event], prefix: str = "") -> dict[str, Any]:
    """The standalone JSON Schema for one event, as validated by :mod:`topics.schemas`.

    For a request the reply-topic family and the byte limit under ``prefix`` are written in, so a
    client validating against this file rejects what the router would.
    """
    schema = model.model_json_schema(mode="validation")
    if model is Request:
        _add_request_rules(schema, prefix)
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": f"urn:npcflow:{model.event_name}:v{SCHEMA_VERSION}",
        **schema,
    }


def _add_request_rules(schema: dict[str, Any], prefix: str) -> None:
    reply = schema["properties"]["reply_topic"]
    for option in reply.get("anyOf", [reply]):
        if option.get("type") == "string":
            option["pattern"] = reply_topic_pattern(prefix)
    schema["description"] = f"{schema.get('description', '')} {WIRE_RULES}".strip()
    schema["x-npcflow-max-bytes"] = MAX_EVENT_BYTES


def _message_name(model_name: str) -> str:
    return model_name[0].lower() + model_name[1:]


def asyncapi_document(prefix: str = "") -> dict[str, Any]:
    """An AsyncAPI 3.0 document: channels are topics, messages reference shared component schemas."""
    _, defs = models_json_schema(
        [(m, "validation") for m in EVENTS], ref_template="#/components/schemas/{model}"
    )
    schemas = defs["$defs"]
    _add_request_rules(schemas["Request"], prefix)
    messages = {
        _message_name(m.__name__): {
            "name": m.__name__,
            "title": m.__name__,
            "summary": (m.__doc__ or "").strip().splitlines()[0],
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{m.__name__}"},
        }
        for m in EVENTS
    }
    channels = {}
    for spec in CATALOGUE:
        channel_id = spec.base.replace(".", "_")
        channels[channel_id] = {
            "address": spec.name(prefix),
            "description": spec.purpose,
            "messages": {spec.message: {"$ref": f"#/components/messages/{_message_name(spec.message)}"}},
            "bindings": {
                "kafka": {
                    "topic": spec.name(prefix),
                    "partitions": spec.partitions,
                    "topicConfiguration": _kafka_topic_config(spec.compacted, spec.retention_ms),
                    "bindingVersion": "0.5.0",
                }
            },
            "x-key": spec.key,
        }

    tenant_replies = {
        "address": f"{REPLIES.name(prefix)}.{{tenant}}",
        "title": "A tenant's own reply topics",
        "description": "Replies to requests that name reply_topic npc.replies.<tenant_id>[.<name>] "
        "(the {tenant} parameter may end in .<name>). Workers never create these topics: a game "
        "server registers its own with `npcflow topics create --reply-topic NAME` before naming it; a "
        "request naming a missing one is dead-lettered. Read it by its exact name.",
        "parameters": {"tenant": {"description": "tenant_id, optionally followed by .<name>"}},
        "messages": {"Reply": {"$ref": f"#/components/messages/{_message_name('Reply')}"}},
        "bindings": {"kafka": {"partitions": REPLIES.partitions, "bindingVersion": "0.5.0"}},
        "x-key": REPLIES.key,
    }
    channels["npc_replies_tenant"] = tenant_replies
    channels[DLQ.base.replace(".", "_")]["description"] = (
        f"{DLQ.purpose} One DeadLetter per rejected event: the reason naming each field and rule, at "
        "most 20 field errors (errors_omitted counts the rest), the original bytes in base64 "
        "(original_null: the record was a tombstone), and the source topic, partition and offset."
    )

    def op(action: str, topic_base: str, summary: str) -> dict[str, Any]:
        channel_id = topic_base.replace(".", "_")
        spec = next(s for s in CATALOGUE if s.base == topic_base)
        return {
            "action": action,
            "channel": {"$ref": f"#/channels/{channel_id}"},
            "summary": summary,
            "messages": [{"$ref": f"#/channels/{channel_id}/messages/{spec.message}"}],
        }

    operations = {
        "sendRequest": op("send", REQUESTS.base, "A game server submits an NPC request (key = npc_id)."),
        "receiveReply": op("receive", REPLIES.base, "A game server reads replies (key = request_id)."),
        "receiveTenantReply": {
            "action": "receive",
            "channel": {"$ref": "#/channels/npc_replies_tenant"},
            "summary": "A game server reads the replies on its own reply topic.",
            "messages": [{"$ref": "#/channels/npc_replies_tenant/messages/Reply"}],
        },
        "receiveOutput": op("receive", OUTPUTS.base, "Sinks and analysts read served requests."),
        "receiveRoutingDecision": op("receive", ROUTING.base, "Ops read why each request went where."),
        "receiveDeadLetter": op("receive", DLQ.base, "Ops read rejected events with their reason."),
        "sendGameState": op("send", GAME_STATE.base, "A game server publishes entity state (compacted)."),
        "sendActiveNpc": op(
            "send", ACTIVE.base, "A game server names the NPCs whose intents Gold keeps fresh (compacted)."
        ),
    }
    for tier, spec in TIER_TOPICS.items():
        operations[f"receive{tier.value.title()}Request"] = op(
            "receive", spec.base, f"The {tier.value} tier worker consumes its routed requests."
        )
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "npcflow",
            "version": metadata.version("npcflow"),
            "description": "Kafka topics and JSON events of the npcflow NPC inference pipeline. "
            f"Event schema version {SCHEMA_VERSION}. The absolute deadline of a routed request travels "
            f"in the Kafka header `{DEADLINE_HEADER}` (epoch milliseconds, ASCII). {WIRE_RULES}",
            "x-consumer-settings": CONSUMER_SETTINGS,
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def _kafka_topic_config(compacted: bool, retention_ms: int | None) -> dict[str, Any]:
    if compacted:
        return {"cleanup.policy": ["compact"]}
    return {"cleanup.policy": ["delete"], "retention.ms": retention_ms}


def export(directory: Path, prefix: str = "") -> list[Path]:
    """Write ``<event>.schema.json`` per event and ``asyncapi.yaml``; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for model in EVENTS:
        path = directory / f"{model.event_name}.schema.json"
        path.write_text(json.dumps(event_json_schema(model, prefix), indent=2, sort_keys=False) + "\n")
        written.append(path)
    asyncapi = directory / "asyncapi.yaml"
    asyncapi.write_text(yaml.safe_dump(asyncapi_document(prefix), sort_keys=False, allow_unicode=True))
    written.append(asyncapi)
    return written
