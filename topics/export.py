"""Export the event schemas for game-server teams that do not write Python.

One JSON Schema (draft 2020-12) per event, plus an AsyncAPI 3 document describing every topic
of the catalogue, the message it carries and who sends or receives it, so a C++/C#/Go team can
generate its own types and clients from files instead of reading our code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic.json_schema import models_json_schema

from pipeline import __version__
from topics.catalogue import CATALOGUE, DLQ, GAME_STATE, OUTPUTS, REPLIES, REQUESTS, ROUTING, TIER_TOPICS
from topics.schemas import EVENTS, SCHEMA_VERSION, Event

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def event_json_schema(model: type[Event]) -> dict[str, Any]:
    """The standalone JSON Schema for one event, as validated by :mod:`topics.schemas`."""
    schema = model.model_json_schema(mode="validation")
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": f"urn:npcflow:{model.event_name}:v{SCHEMA_VERSION}",
        **schema,
    }


def _message_name(model_name: str) -> str:
    return model_name[0].lower() + model_name[1:]


def asyncapi_document(prefix: str = "") -> dict[str, Any]:
    """An AsyncAPI 3.0 document: channels are topics, messages reference shared component schemas."""
    _, defs = models_json_schema(
        [(m, "validation") for m in EVENTS], ref_template="#/components/schemas/{model}"
    )
    schemas = defs["$defs"]
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
        "receiveOutput": op("receive", OUTPUTS.base, "Sinks and analysts read served requests."),
        "receiveRoutingDecision": op("receive", ROUTING.base, "Ops read why each request went where."),
        "receiveDeadLetter": op("receive", DLQ.base, "Ops read rejected events with their reason."),
        "sendGameState": op("send", GAME_STATE.base, "A game server publishes entity state (compacted)."),
    }
    for tier, spec in TIER_TOPICS.items():
        operations[f"receive{tier.value.title()}Request"] = op(
            "receive", spec.base, f"The {tier.value} tier worker consumes its routed requests."
        )
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "npcflow",
            "version": __version__,
            "description": "Kafka topics and JSON events of the npcflow NPC inference pipeline. "
            f"Event schema version {SCHEMA_VERSION}. The absolute deadline of a routed request travels "
            "in the Kafka header `npcflow-deadline-ms` (epoch milliseconds, ASCII).",
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
        path.write_text(json.dumps(event_json_schema(model), indent=2, sort_keys=False) + "\n")
        written.append(path)
    asyncapi = directory / "asyncapi.yaml"
    asyncapi.write_text(yaml.safe_dump(asyncapi_document(prefix), sort_keys=False, allow_unicode=True))
    written.append(asyncapi)
    return written
