"""The exported AsyncAPI document is valid AsyncAPI 3.0 and states the wire contract the code keeps.

Validated against the official JSON Schema of the specification (``tests/schemas/asyncapi/``, from
npm's ``@asyncapi/specs``; nothing is fetched). The headers, keys, correlation id and reply address
it declares are checked against what the code writes and reads.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from pipeline.cli import main
from tests.examples import VALID_REQUEST
from topics import asyncapi, headers
from topics.catalogue import CATALOGUE, INTENTS, REQUESTS, TIER_TOPICS, Tier
from topics.schemas import TierAttempt

SPEC = Path(__file__).resolve().parents[1] / "schemas" / "asyncapi" / "3.0.0.json"
SPEC_SHA256 = "d4571a420e6ffb7fcc7066c95a6db1202f299a3c51daa103d0706bf30f95e626"


@pytest.fixture(scope="module")
def spec() -> jsonschema.Draft7Validator:
    raw = SPEC.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == SPEC_SHA256, "update tests/schemas/asyncapi/README.md"
    schema = json.loads(raw)
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


@pytest.fixture(scope="module")
def doc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The file ``npcflow schema export`` writes, read back as a client would."""
    out = tmp_path_factory.mktemp("schemas")
    result = CliRunner().invoke(main, ["schema", "export", str(out), "--prefix", "p."])
    assert result.exit_code == 0, result.output
    return yaml.safe_load((out / "asyncapi.yaml").read_text())


def errors(validator: jsonschema.Draft7Validator, instance: Any) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message[:200]}" for e in validator.iter_errors(instance)]


def test_the_export_is_valid_asyncapi_3(spec: jsonschema.Draft7Validator, doc: dict[str, Any]) -> None:
    assert doc["asyncapi"] == "3.0.0"
    assert errors(spec, doc) == []


def test_the_specification_schema_rejects_what_asyncapi_3_forbids(
    spec: jsonschema.Draft7Validator, doc: dict[str, Any]
) -> None:
    """The validator really applies the specification (AsyncAPI 2's ``publish``, a reply address
    without a runtime expression, a key binding that is no schema)."""
    for path, bad in (
        (("operations", "sendRequest", "action"), "publish"),
        (("operations", "sendRequest", "reply", "address", "location"), "reply_topic"),
        (("components", "messages", "request", "bindings", "kafka", "key"), {"type": 5}),
    ):
        broken = json.loads(json.dumps(doc))
        node = broken
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = bad
        assert errors(spec, broken), path


def resolve(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def headers_schema(doc: dict[str, Any], message: str) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(resolve(doc, doc["components"]["messages"][message]["headers"]["$ref"]))


def as_headers(pairs: list[tuple[str, bytes]]) -> dict[str, str]:
    return {k: v.decode() for k, v in pairs}


def test_the_headers_the_code_writes_match_the_header_schemas(doc: dict[str, Any]) -> None:
    routed = headers_schema(doc, "routedRequest")
    assert errors(routed, as_headers(headers.deadline_headers(1_800_000_000_000, "silver"))) == []
    assert errors(routed, as_headers(headers.refresh_headers(1_800_000_000_000))) == []
    handed_on = headers.fallback_headers(
        Tier.BRONZE,
        1_800_000_060_000,
        attempt=1,
        from_tier=Tier.SILVER,
        reason="timeout: no answer within 250 ms",
        chain=[TierAttempt(tier=Tier.SILVER, outcome="failed", reason="timeout")],
        original_deadline_ms=1_800_000_000_000,
    )
    assert errors(routed, as_headers(handed_on)) == []
    # A request without its deadline, or half a fallback, is not what the router writes.
    assert errors(routed, {asyncapi.TIER_HEADER: "gold"})
    assert errors(
        routed, {**as_headers(headers.deadline_headers(1, "gold")), asyncapi.FALLBACK_ATTEMPT_HEADER: "1"}
    )
    intake = headers_schema(doc, "request")
    assert errors(intake, {headers.REPLAY_OF_HEADER: "req-1"}) == []
    assert errors(intake, {headers.REPLAY_OF_HEADER: 7})


def test_every_topic_states_its_key_as_a_kafka_binding(doc: dict[str, Any]) -> None:
    channels = {c["address"]: c for c in doc["channels"].values() if c["address"]}
    for spec in CATALOGUE:
        channel = channels[spec.name("p.")]
        assert "x-key" not in channel
        (ref,) = (m["$ref"] for m in channel["messages"].values())
        binding = resolve(doc, ref)["bindings"]["kafka"]
        assert binding["bindingVersion"] == "0.5.0"
        assert binding["key"]["type"] == "string", spec.base
    key = jsonschema.Draft7Validator(doc["components"]["messages"]["request"]["bindings"]["kafka"]["key"])
    assert errors(key, VALID_REQUEST["npc_id"]) == []
    assert errors(key, "an npc id with spaces")
    for spec in TIER_TOPICS.values():
        assert list(channels[spec.name("p.")]["messages"]) == ["routedRequest"]


def test_requests_name_their_correlation_id_and_reply_address(doc: dict[str, Any]) -> None:
    messages = doc["components"]["messages"]
    schemas = doc["components"]["schemas"]
    for name in ("request", "routedRequest", "reply", "routingDecision", "output"):
        correlation = resolve(doc, messages[name]["correlationId"]["$ref"])
        pointer = correlation["location"].removeprefix("$message.payload#/").split("/")
        node = resolve(doc, messages[name]["payload"]["$ref"])
        for part in pointer:  # the field exists in the payload's schema
            node = node["properties"][part]
            node = resolve(doc, node["$ref"]) if "$ref" in node else node
        assert node["pattern"] == schemas["Request"]["properties"]["request_id"]["pattern"], name
    reply = doc["operations"]["sendRequest"]["reply"]
    assert reply["address"]["location"] == "$message.payload#/reply_topic"
    assert "reply_topic" in schemas["Request"]["properties"]
    channel = resolve(doc, reply["channel"]["$ref"])
    assert channel["address"] is None  # AsyncAPI 3: a reply address needs a channel without one
    assert resolve(doc, reply["messages"][0]["$ref"]) == {"$ref": "#/components/messages/reply"}


def test_game_servers_can_follow_and_set_intents(doc: dict[str, Any]) -> None:
    """The README sends non-Python servers to npc.intents: the document says how."""
    on_intents = {
        op["action"]
        for op in doc["operations"].values()
        if resolve(doc, op["channel"]["$ref"])["address"] == INTENTS.name("p.")
    }
    assert on_intents == {"send", "receive"}
    intent = doc["components"]["messages"]["intent"]
    assert "tombstone" in intent["description"]
    assert intent["bindings"]["kafka"]["key"]["pattern"]
    sends = {
        resolve(doc, op["channel"]["$ref"])["address"]
        for op in doc["operations"].values()
        if op["action"] == "send"
    }
    assert REQUESTS.name("p.") in sends
