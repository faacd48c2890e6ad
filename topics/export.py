"""Export the event schemas for game-server teams that do not write Python.

One JSON Schema (draft 2020-12) per event, plus the AsyncAPI 3 document of every topic of the
catalogue (:mod:`topics.asyncapi`), so a C++/C#/Go team can generate its own types and clients from
files instead of reading our code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from topics.asyncapi import EVENTS, asyncapi_document
from topics.fields import SCHEMA_VERSION
from topics.schemas import Event, Request
from topics.wire_rules import add_request_rules

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def event_json_schema(model: type[Event], prefix: str = "") -> dict[str, Any]:
    """The standalone JSON Schema for one event, as its model validates it.

    For a request the reply-topic family and the byte limit under ``prefix`` are written in, so a
    client validating against this file rejects what the router would.
    """
    schema = model.model_json_schema(mode="validation")
    if model is Request:
        add_request_rules(schema, prefix)
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": f"urn:npcflow:{model.event_name}:v{SCHEMA_VERSION}",
        **schema,
    }


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
