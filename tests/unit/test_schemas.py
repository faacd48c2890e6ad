"""Event validation: what is accepted, what is rejected and how the rejection reads."""

from __future__ import annotations

import json

import jsonschema
import pytest

from tests.examples import INVALID_JSON_BODIES, INVALID_RAW_BODIES, VALID_REQUEST, encode, with_, without
from topics.catalogue import Tier
from topics.export import event_json_schema
from topics.fields import ReplyStatus, ServedBy
from topics.rejections import DeadLetter, parse_request
from topics.schemas import GameStateUpdate, InvalidEvent, Reply, Request


def test_valid_request_round_trips() -> None:
    request = parse_request(encode(VALID_REQUEST))
    assert request.npc_id == "npc-blacksmith-7"
    assert request.context["hp"] == 12
    assert parse_request(request.to_bytes()) == request


def test_optional_fields_default() -> None:
    request = parse_request(encode(without("sla", "latency_budget_ms", "tools", "context", "reply_topic")))
    assert request.sla is None and request.latency_budget_ms is None
    assert request.tools == [] and request.context == {} and request.reply_topic is None


def test_integral_float_is_an_integer_like_json_schema_says() -> None:
    assert parse_request(encode(with_(max_tokens=32.0))).max_tokens == 32


@pytest.mark.parametrize(
    ("name", "body", "field", "rule"), INVALID_JSON_BODIES, ids=[c[0] for c in INVALID_JSON_BODIES]
)
def test_invalid_request_names_field_and_rule(name: str, body: dict, field: str, rule: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_request(encode(body))
    reason = info.value.reason
    assert any(e.field == field and rule in e.rule for e in info.value.errors), reason
    assert field in reason and rule in reason


@pytest.mark.parametrize(("name", "raw", "words"), INVALID_RAW_BODIES, ids=[c[0] for c in INVALID_RAW_BODIES])
def test_unparseable_bodies_are_rejected_with_reason(name: str, raw: bytes, words: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_request(raw)
    assert words in info.value.reason


@pytest.mark.parametrize(
    ("body", "valid"),
    [(VALID_REQUEST, True), (with_(max_tokens=32.0), True), (without("sla", "tools", "context"), True)]
    + [(case[1], False) for case in INVALID_JSON_BODIES],
)
def test_exported_json_schema_agrees_with_python_validation(body: dict, valid: bool) -> None:
    validator = jsonschema.Draft202012Validator(event_json_schema(Request))
    schema_ok = validator.is_valid(json.loads(json.dumps(body)))
    try:
        parse_request(encode(body))
        python_ok = True
    except InvalidEvent:
        python_ok = False
    assert schema_ok == python_ok == valid


def test_reply_and_dead_letter_schemas_validate_real_events() -> None:
    reply = Reply(
        request_id="r1",
        npc_id="n1",
        tenant_id="t1",
        tier=Tier.GOLD,
        served_by=ServedBy.ENGINE,
        engine="scripted",
        status=ReplyStatus.OK,
        text="Draws a sword.",
        replied_at_ms=1,
    )
    letter = DeadLetter(
        reason="empty body",
        original_b64="",
        original_size=0,
        source_topic="npc.requests",
        source_partition=0,
        source_offset=7,
        stage="router",
        failed_at_ms=1,
    )
    state = GameStateUpdate(
        entity_id="npc-1",
        world_id="w1",
        kind="npc",
        state={"hp": 3, "pos": [1, 2]},
        version=4,
        updated_at_ms=1,
    )
    for event in (reply, letter, state):
        schema = event_json_schema(type(event))
        jsonschema.Draft202012Validator(schema).validate(json.loads(event.to_bytes()))
    assert json.loads(reply.to_bytes())["status"] == "ok"
    assert json.loads(reply.to_bytes())["served_by"] == "engine"
    bad_reply = json.loads(reply.to_bytes()) | {"status": "maybe"}
    assert not jsonschema.Draft202012Validator(event_json_schema(Reply)).is_valid(bad_reply)
    with pytest.raises(ValueError):
        Reply.from_bytes(json.dumps(bad_reply).encode())


def test_reply_enums_keep_their_wire_values() -> None:
    """Game servers match on these strings: renaming a member must not change what is sent."""
    # New statuses are appended (accepted: the async job notice); the first four never move.
    assert [s.value for s in ReplyStatus] == ["ok", "fallback", "expired", "error", "accepted"]
    # result_cache appended (issue 12: an earlier answer to the same prompt).
    assert [s.value for s in ServedBy] == ["engine", "cache", "default_intent", "none", "result_cache"]
    schema = event_json_schema(Reply)
    defs = schema["$defs"]
    assert defs["ReplyStatus"]["enum"] == ["ok", "fallback", "expired", "error", "accepted"]
    assert defs["ServedBy"]["enum"] == ["engine", "cache", "default_intent", "none", "result_cache"]
