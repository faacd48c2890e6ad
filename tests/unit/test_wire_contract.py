"""One definition of validity: the exported JSON Schema and the router give the same verdict.

A game server in C++ or C# validates with an ECMA-262 regex engine, so the schema validator here
uses one too (``regress``, Rust's ECMA-262 engine) instead of Python's ``re``, whose ``$`` also
matches before a trailing newline. Hypothesis generates events from and around the schema:
valid ones, and each field replaced by values of the wrong type, at and past its bounds, with
trailing newlines, booleans where integers are expected, and so on.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import regress
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.examples import VALID_REQUEST
from topics.export import event_json_schema
from topics.fields import MAX_EVENT_BYTES
from topics.rejections import DEAD_LETTER_OVERHEAD_BYTES, MAX_DEAD_LETTER_ERRORS, DeadLetter, parse_request
from topics.schemas import InvalidEvent, Request

PREFIX = ""
SCHEMA = event_json_schema(Request, PREFIX)


def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: Any):  # type: ignore[no-untyped-def]
    if validator.is_type(instance, "string") and regress.Regex(pattern).find(instance) is None:
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r} (ECMA-262)")


EcmaValidator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _ecma_pattern})
VALIDATOR = EcmaValidator(SCHEMA)


def schema_accepts(body: dict[str, Any]) -> bool:
    return VALIDATOR.is_valid(body)


def router_accepts(raw: bytes) -> bool:
    try:
        parse_request(raw, PREFIX)
    except InvalidEvent:
        return False
    return True


tenant = st.sampled_from(["gs-eu-1", "gs_2", "tenant.with.dots", "a:b", "x"])
segment = st.one_of(
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,10}", fullmatch=True),
    st.sampled_from(["", "__consumer_offsets", "-x", "a.b", "a\n", "x" * 64, "x" * 65, "ü"]),
)
small_text = st.text(max_size=12)
edgy_strings = st.one_of(
    small_text,
    small_text.map(lambda s: s + "\n"),
    st.sampled_from(["", " ", "\n", "a\n", "npc-1\n", "ok", "x" * 64, "x" * 65, "x" * 128, "x" * 129]),
)
numbers = st.one_of(
    st.integers(min_value=-(2**60), max_value=2**60),
    st.sampled_from([0, 1, 2, 8, 16, 2000, 2001, 3_600_000, 3_600_001, 2**53 - 1, 2**53]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1.0, 8.0, 2000.0, 0.5, -1.0, 1e20]),
)
scalars = st.one_of(st.booleans(), st.none(), numbers, edgy_strings)
anything = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(small_text, scalars, max_size=3))


@st.composite
def reply_topics(draw: st.DrawFn, tenant_id: str) -> Any:
    kind = draw(st.sampled_from(["own", "own-named", "other", "hostile", "default", "absent", "junk"]))
    if kind == "own":
        return f"npc.replies.{tenant_id}"
    if kind == "own-named":
        return f"npc.replies.{tenant_id}.{draw(segment)}"
    if kind == "other":
        return f"npc.replies.{draw(segment)}"
    if kind == "hostile":
        return draw(
            st.sampled_from(
                [
                    "npc.replies.",
                    "npc.replies..",
                    "npc.routing",
                    "npc.replies\n",
                    "npc.replies." + "x" * 240,
                    "npc.replies.a.b.c",
                    "__consumer_offsets",
                ]
            )
        )
    if kind == "default":
        return "npc.replies"
    if kind == "absent":
        return None
    return draw(anything)


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    body = dict(VALID_REQUEST)
    body["tenant_id"] = draw(tenant)
    body["reply_topic"] = draw(reply_topics(body["tenant_id"]))
    if body["reply_topic"] is None:
        del body["reply_topic"]
    for name in draw(st.lists(st.sampled_from([*VALID_REQUEST, "schema_version", "extra"]), max_size=3)):
        field_values = {
            "schema_version": st.one_of(st.sampled_from([1, 1.0, True, 2, "1", None, 0]), scalars),
            "max_tokens": st.one_of(st.booleans(), numbers, st.sampled_from(["8", None])),
            "latency_budget_ms": st.one_of(st.booleans(), numbers, st.none()),
            "created_at_ms": st.one_of(st.booleans(), numbers),
            "sla": st.one_of(
                st.sampled_from(["realtime", "interactive", "async", "Realtime", "async\n"]), scalars
            ),
            "tools": st.one_of(st.lists(edgy_strings, max_size=9), scalars),
            "context": st.one_of(st.dictionaries(edgy_strings, anything, max_size=4), scalars),
        }
        if draw(st.booleans()) and name in body:
            del body[name]
        else:
            body[name] = draw(field_values.get(name, anything))
    return body


def _tenant_mismatch(body: dict[str, Any]) -> bool:
    """The one rule JSON Schema cannot state: the reply topic's tenant segment equals tenant_id."""
    topic = body.get("reply_topic")
    if not isinstance(topic, str) or not topic.startswith("npc.replies."):
        return False
    return topic.split(".")[2] != body.get("tenant_id")


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_the_exported_schema_and_the_router_agree(body: dict[str, Any]) -> None:
    raw = json.dumps(body).encode()
    if len(raw) > MAX_EVENT_BYTES:  # stated in the schema (x-npcflow-max-bytes); not a JSON Schema keyword
        assert not router_accepts(raw)
        return
    schema_ok, router_ok = schema_accepts(body), router_accepts(raw)
    if schema_ok and _tenant_mismatch(body):
        assert not router_ok, f"router accepted another tenant's reply topic: {body}"
        return
    assert schema_ok == router_ok, f"schema says {schema_ok}, router says {router_ok} for {body}"


def test_schema_version_true_and_internal_reply_topics_are_invalid_in_both() -> None:
    for change in (
        {"schema_version": True},
        {"reply_topic": "npc.replies.__consumer_offsets"},
        {"reply_topic": "npc.replies."},
        {"reply_topic": "npc.replies.."},
        {"reply_topic": "npc.replies." + "x" * 237},
        {"tenant_id": "gs\n"},
    ):
        body = {**VALID_REQUEST, **change}
        assert not schema_accepts(body), change
        assert not router_accepts(json.dumps(body).encode()), change


def test_a_tenant_may_name_its_own_reply_topics() -> None:
    for topic in ("npc.replies", "npc.replies.gs-eu-1", "npc.replies.gs-eu-1.frame-loop"):
        body = {**VALID_REQUEST, "reply_topic": topic}
        assert schema_accepts(body) and router_accepts(json.dumps(body).encode()), topic


def _dead_letter_for(raw: bytes | None) -> DeadLetter:
    try:
        parse_request(raw, PREFIX)
    except InvalidEvent as exc:
        return DeadLetter.of(raw, exc.reason, "npc.requests", 0, 7, exc.errors)
    raise AssertionError("expected the event to be rejected")


def test_a_dead_letter_never_amplifies_its_input() -> None:
    """At the largest event the router reads, thousands of invalid values make a bounded record."""
    body = dict(VALID_REQUEST)
    body["context"] = {}
    raw = json.dumps(body).encode()
    i = 0
    while len(raw) < MAX_EVENT_BYTES - 40:
        body["context"][f"k{i:05d}" + "x" * 40] = {"nested": [i]}
        raw = json.dumps(body).encode()
        i += 1
    assert len(raw) <= MAX_EVENT_BYTES
    letter = _dead_letter_for(raw)
    size = len(letter.to_bytes())
    assert len(letter.errors) == MAX_DEAD_LETTER_ERRORS and letter.errors_omitted > 500
    assert size <= len(raw) * 4 / 3 + DEAD_LETTER_OVERHEAD_BYTES
    assert size <= 2 * len(raw), f"dead letter {size} B for a {len(raw)} B event"
    assert all(len(e.field) <= 200 and len(e.message) <= 200 for e in letter.errors)


def test_a_tombstone_and_an_empty_value_make_different_dead_letters() -> None:
    tombstone, empty = _dead_letter_for(None), _dead_letter_for(b"")
    assert tombstone.original_null and not empty.original_null
    assert "null" in tombstone.reason and "empty body" in empty.reason
