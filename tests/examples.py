"""Shared example events: one valid request and a catalogue of invalid ones with the rule each breaks."""

from __future__ import annotations

import json
from typing import Any

VALID_REQUEST: dict[str, Any] = {
    "request_id": "req-0001",
    "npc_id": "npc-blacksmith-7",
    "tenant_id": "gs-eu-1",
    "prompt": "The player asks for a sword.",
    "max_tokens": 32,
    "sla": "interactive",
    "latency_budget_ms": 250,
    "tools": ["game_state_query"],
    "context": {"zone": "forge", "hp": 12, "angry": False, "mood": 0.5},
    "created_at_ms": 1_790_000_000_000,
    "reply_topic": "npc.replies",
}


def with_(**changes: Any) -> dict[str, Any]:
    body = dict(VALID_REQUEST)
    body.update(changes)
    return body


def without(*keys: str) -> dict[str, Any]:
    return {k: v for k, v in VALID_REQUEST.items() if k not in keys}


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


#: (name, body, field named in the reason, rule named in the reason)
INVALID_JSON_BODIES: list[tuple[str, dict[str, Any], str, str]] = [
    ("missing request_id", without("request_id"), "request_id", "missing"),
    ("missing prompt", without("prompt"), "prompt", "missing"),
    ("missing created_at", without("created_at_ms"), "created_at_ms", "missing"),
    ("max_tokens as string", with_(max_tokens="32"), "max_tokens", "int_type"),
    ("max_tokens negative", with_(max_tokens=-1), "max_tokens", "greater_than_equal"),
    ("max_tokens zero", with_(max_tokens=0), "max_tokens", "greater_than_equal"),
    ("max_tokens huge", with_(max_tokens=10**9), "max_tokens", "less_than_equal"),
    ("max_tokens fractional", with_(max_tokens=3.5), "max_tokens", "int"),
    ("max_tokens boolean", with_(max_tokens=True), "max_tokens", "int_type"),
    ("unknown sla", with_(sla="instant"), "sla", "enum"),
    ("prompt empty", with_(prompt=""), "prompt", "string_too_short"),
    ("prompt oversize", with_(prompt="x" * 4001), "prompt", "string_too_long"),
    ("prompt as number", with_(prompt=42), "prompt", "string_type"),
    ("npc_id with spaces", with_(npc_id="npc 7"), "npc_id", "string_pattern_mismatch"),
    ("request_id null", with_(request_id=None), "request_id", "string_type"),
    ("budget zero", with_(latency_budget_ms=0), "latency_budget_ms", "greater_than_equal"),
    ("budget as float string", with_(latency_budget_ms="16"), "latency_budget_ms", "int_type"),
    ("tools not a list", with_(tools="rag_search"), "tools", "list_type"),
    ("too many tools", with_(tools=["a"] * 9), "tools", "too_long"),
    ("bad tool name", with_(tools=["Rag Search"]), "tools.0", "string_pattern_mismatch"),
    ("context nested", with_(context={"inventory": {"sword": 1}}), "context.inventory", "scalar_type"),
    ("unknown field", with_(priority=5), "priority", "extra_forbidden"),
    ("negative timestamp", with_(created_at_ms=-5), "created_at_ms", "greater_than_equal"),
    ("reply topic with slash", with_(reply_topic="a/b"), "reply_topic", "string_pattern_mismatch"),
    ("wrong schema version", with_(schema_version=2), "schema_version", "literal_error"),
]

#: (name, raw bytes, words the reason must contain) for bodies that are not a JSON object at all.
INVALID_RAW_BODIES: list[tuple[str, bytes, str]] = [
    ("empty body", b"", "empty body"),
    ("malformed JSON", b'{"request_id": "r1", ', "Invalid JSON"),
    ("invalid UTF-8", b'{"prompt": "\xff\xfe"}', "not valid UTF-8"),
    ("JSON array", b"[1, 2, 3]", "object"),
    ("JSON string", b'"hello"', "object"),
    ("oversize event", b'{"prompt": "' + b"a" * 70_000 + b'"}', "byte limit"),
    # Not JSON strictly speaking, but parsers accept it; a NaN would poison every event built from it.
    ("NaN in context", encode(with_(request_id="nan-1")).replace(b'"mood": 0.5', b'"mood": NaN'), "finite"),
]
