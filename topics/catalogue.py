"""Every topic npcflow uses: name, key, partitions, retention and purpose, defined once.

Names take a configurable prefix (``NPCFLOW_TOPIC_PREFIX``) so a sandbox or a replay can run
beside production on one cluster without touching its topics.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

DAY_MS = 24 * 60 * 60 * 1000


class Tier(StrEnum):
    """Service tiers, fastest first: the fallback order is the declaration order."""

    GOLD = "gold"
    SILVER = "silver"
    BRONZE = "bronze"


@dataclass(frozen=True)
class TopicSpec:
    """One topic of the catalogue; ``base`` is the unprefixed name."""

    base: str
    key: str
    partitions: int
    purpose: str
    message: str
    retention_ms: int | None = 7 * DAY_MS
    compacted: bool = False

    def name(self, prefix: str | None = "") -> str:
        """The topic's name on the broker under ``prefix`` (``Settings.topic_prefix``)."""
        return f"{prefix or ''}{self.base}"

    def config(self, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
        """Topic-level configs for CreateTopics; ``overrides`` (e.g. :data:`EMBEDDED_TOPIC_CONFIG`) win.

        A compacted topic keeps its cleanup policy and never takes a ``retention.ms`` override:
        its promise is the latest value per key, however old.
        """
        if self.compacted:
            config = {"cleanup.policy": "compact"}
            kept = ("retention.ms", "cleanup.policy")
            extra = {k: v for k, v in (overrides or {}).items() if k not in kept}
        else:
            assert self.retention_ms is not None
            config = {"cleanup.policy": "delete", "retention.ms": str(self.retention_ms)}
            extra = dict(overrides or {})
        return config | extra


def short_retention(retention_ms: int, segment_ms: int) -> dict[str, str]:
    """Overrides for a short-lived broker (dev stack, tests, benchmarks): keep little, roll often.

    Production retention is the catalogue's (and then the operator's); a dev stack keeps only what
    a test or a demo may read back, so its disk stays bounded however long it runs.
    """
    return {"retention.ms": str(retention_ms), "segment.ms": str(segment_ms)}


#: The embedded stack's topics (demo, tests): ten minutes of history is plenty for a test to read
#: a topic back; a segment a minute keeps the file count low with a catalogue per test module.
EMBEDDED_TOPIC_CONFIG = short_retention(retention_ms=10 * 60 * 1000, segment_ms=60 * 1000)
#: Benchmarks: five minutes of history, so long runs leave the disk as it started. Not much less:
#: a consumer that falls further behind than retention.ms loses the records deleted under it
#: (seen with 5 s on a loaded machine: the router fell 5 s behind and 27,000 requests were gone).
BENCHMARK_TOPIC_CONFIG = short_retention(retention_ms=5 * 60 * 1000, segment_ms=30 * 1000)


REQUESTS = TopicSpec(
    "npc.requests", "npc_id", 6, "Intake: game servers produce NPC inference requests here.", "Request"
)
REQUESTS_GOLD = TopicSpec(
    "npc.requests.gold",
    "npc_id",
    6,
    "Real-time NPC actions, routed to the Gold tier.",
    "Request",
    retention_ms=1 * DAY_MS,
)
REQUESTS_SILVER = TopicSpec(
    "npc.requests.silver",
    "npc_id",
    6,
    "Interactive dialogue (with MCP tools), routed to the Silver tier.",
    "Request",
    retention_ms=1 * DAY_MS,
)
REQUESTS_BRONZE = TopicSpec(
    "npc.requests.bronze",
    "npc_id",
    3,
    "Async story generation, routed to the Bronze tier.",
    "Request",
    retention_ms=3 * DAY_MS,
)
REPLIES = TopicSpec(
    "npc.replies",
    "request_id",
    6,
    "Default reply topic: exactly one reply per accepted request.",
    "Reply",
    retention_ms=1 * DAY_MS,
)
OUTPUTS = TopicSpec(
    "npc.outputs",
    "request_id",
    6,
    "Every reply, fanned out to the cache, Aurora, S3 and OpenSearch sinks.",
    "Output",
)
ROUTING = TopicSpec(
    "npc.routing",
    "request_id",
    3,
    "One routing-decision record per request: the tier and why.",
    "RoutingDecision",
)
DLQ = TopicSpec(
    "npc.requests.dlq",
    "source",
    1,
    "Dead letters: invalid or poison events with the reason and origin.",
    "DeadLetter",
    retention_ms=30 * DAY_MS,
)
GAME_STATE = TopicSpec(
    "game.state",
    "entity_id",
    6,
    "Latest game state per entity, served to Silver's MCP tools.",
    "GameStateUpdate",
    retention_ms=None,
    compacted=True,
)

INTENTS = TopicSpec(
    "npc.intents",
    "npc_id",
    6,
    "Each NPC's current intent (Gold model results, game overrides), followed by routers and game servers.",
    "Intent",
    retention_ms=None,
    compacted=True,
)

ACTIVE = TopicSpec(
    "npc.active",
    "npc_id",
    6,
    "The NPCs games need fresh intents for, with a lease (tombstone: unwatched); Gold workers refresh them.",
    "ActiveNpc",
    retention_ms=None,
    compacted=True,
)

SINK_DLQ = TopicSpec(
    "npc.outputs.dlq",
    "sink",
    1,
    "Outputs a sink could not write for good (key = the sink's name), with the reason.",
    "DeadLetter",
    retention_ms=30 * DAY_MS,
)


#: Kafka's own limit is 249 characters; ours leaves room for a prefix and keeps names readable.
MAX_REPLY_TOPIC_CHARS = 200
#: One segment after ``npc.replies``: starts with a letter or digit (no ``__internal`` names), no dots.
REPLY_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"


def reply_topic_pattern(prefix: str = "") -> str:
    """The reply-topic family as a regular expression meaning the same in Python, Rust and ECMA-262.

    ``npc.replies`` (shared) or ``npc.replies.<tenant>[.<name>]``: no empty segments, no internal
    topics, at most two segments. Only ``.`` needs escaping: prefixes are topic characters.
    """
    return "^" + prefix.replace(".", r"\.") + r"npc\.replies(?:\." + REPLY_SEGMENT + r"){0,2}$"


def reply_topic_problem(topic: str, prefix: str, tenant_id: str) -> str | None:
    """Why ``topic`` is not a reply topic this tenant may name, or None when it may.

    A request may name the shared ``npc.replies`` or its own family ``npc.replies.<tenant_id>[.<name>]``
    (same prefix): otherwise any game server could make workers write into the tier, output or
    game-state topics, or into another tenant's replies. Workers never create a reply topic; a
    game server registers its own with ``npcflow topics create --reply-topic``.
    """
    default = REPLIES.name(prefix)
    if topic == default:
        return None
    if len(topic) > MAX_REPLY_TOPIC_CHARS:
        return f"reply_topic is {len(topic)} characters, over {MAX_REPLY_TOPIC_CHARS}"
    if not re.fullmatch(reply_topic_pattern(prefix)[1:-1], topic):
        return f"reply_topic {topic!r} is not {default} or {default}.<tenant>[.<name>]"
    tenant_segment = topic[len(default) + 1 :].split(".")[0]
    if tenant_segment != tenant_id:
        return f"reply_topic {topic!r} belongs to tenant {tenant_segment!r}, not {tenant_id!r}"
    return None


CATALOGUE: tuple[TopicSpec, ...] = (
    REQUESTS,
    REQUESTS_GOLD,
    REQUESTS_SILVER,
    REQUESTS_BRONZE,
    REPLIES,
    OUTPUTS,
    ROUTING,
    DLQ,
    GAME_STATE,
    INTENTS,
    ACTIVE,
    SINK_DLQ,
)

TIER_TOPICS: dict[Tier, TopicSpec] = {
    Tier.GOLD: REQUESTS_GOLD,
    Tier.SILVER: REQUESTS_SILVER,
    Tier.BRONZE: REQUESTS_BRONZE,
}
