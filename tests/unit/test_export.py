"""The schema export for game servers in other languages: files that validate, and the wire rules."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import yaml
from click.testing import CliRunner

from pipeline.cli import main
from tests.examples import VALID_REQUEST
from topics.asyncapi import EVENTS
from topics.catalogue import CATALOGUE, REPLIES


def test_schema_export_writes_json_schemas_and_asyncapi(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["schema", "export", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    names = sorted(p.name for p in out.glob("*.schema.json"))
    assert names == sorted(f"{m.event_name}.schema.json" for m in EVENTS)
    for path in out.glob("*.schema.json"):
        schema = json.loads(path.read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["$schema"].endswith("2020-12/schema")

    doc = yaml.safe_load((out / "asyncapi.yaml").read_text())
    assert doc["asyncapi"].startswith("3.")
    # The reply address a request names is known at run time only: that channel has none.
    addresses = {c["address"] for c in doc["channels"].values() if c["address"] is not None}
    assert addresses == {s.name("") for s in CATALOGUE} | {REPLIES.name("") + ".{tenant}"}
    # Every $ref in the document points at something that exists in it.
    refs: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            refs.extend(v for k, v in node.items() if k == "$ref")
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    assert refs
    for ref in refs:
        target: object = doc
        for part in ref.removeprefix("#/").split("/"):
            assert isinstance(target, dict) and part in target, ref
            target = target[part]
    request_schema = doc["components"]["schemas"]["Request"]
    assert request_schema["properties"]["max_tokens"]["maximum"] == 2000


def test_exported_request_schema_rejects_internal_reply_topics_and_boolean_versions(tmp_path: Path) -> None:
    """The issue's acceptance: what a schema-only client sees."""
    result = CliRunner().invoke(main, ["schema", "export", str(tmp_path)])
    assert result.exit_code == 0, result.output
    validator = jsonschema.Draft202012Validator(json.loads((tmp_path / "request.schema.json").read_text()))
    assert validator.is_valid(VALID_REQUEST)
    assert not validator.is_valid({**VALID_REQUEST, "reply_topic": "npc.replies.__consumer_offsets"})
    assert not validator.is_valid({**VALID_REQUEST, "schema_version": True})
    assert validator.is_valid({**VALID_REQUEST, "schema_version": 1})
