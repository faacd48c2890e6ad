"""What the router enforces beyond the field rules, written into both exports for schema-only clients.

A C++/C#/Go game server validates against the exported files, not our code: the reply-topic family
and the byte limit go into the request schema itself, the rest (finite numbers, the tenant segment,
which JSON Schema cannot compare) into its description.
"""

from __future__ import annotations

from typing import Any

from topics.catalogue import reply_topic_pattern
from topics.fields import MAX_EVENT_BYTES

WIRE_RULES = (
    f"The UTF-8 JSON body of a request is at most {MAX_EVENT_BYTES} bytes. Numbers are finite "
    "(JSON has no NaN or Infinity; a parser that accepts them must not send them). reply_topic is "
    "npc.replies or npc.replies.<tenant_id>[.<name>] with the tenant segment equal to tenant_id "
    "(JSON Schema cannot compare fields; the router checks it) and the topic created beforehand. "
    "Patterns are ECMA-262 regular expressions without flags; `$` is the end of the string."
)


def add_request_rules(schema: dict[str, Any], prefix: str) -> None:
    """Write the reply-topic family under ``prefix`` and the byte limit into a request's schema."""
    reply = schema["properties"]["reply_topic"]
    for option in reply.get("anyOf", [reply]):
        if option.get("type") == "string":
            option["pattern"] = reply_topic_pattern(prefix)
    schema["description"] = f"{schema.get('description', '')} {WIRE_RULES}".strip()
    schema["x-npcflow-max-bytes"] = MAX_EVENT_BYTES
