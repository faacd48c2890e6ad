"""How the SDK counts the replies it reads: each reply once, by its first copy."""

from __future__ import annotations

from pipeline.client import NPCClient
from pipeline.config import Settings
from topics.catalogue import Tier
from topics.fields import ReplyStatus, ServedBy
from topics.schemas import Reply


def reply(request_id: str) -> bytes:
    return Reply(
        request_id=request_id,
        npc_id="npc-1",
        tenant_id="gs",
        tier=Tier.GOLD,
        status=ReplyStatus.OK,
        served_by=ServedBy.CACHE,
        replied_at_ms=1,
    ).to_bytes()


def test_a_replayed_late_or_unsolicited_reply_counts_once_then_as_a_duplicate() -> None:
    client = NPCClient(Settings(kafka_bootstrap="unused:9092"), tenant_id="gs")
    client._remember(client._given_up, "gave-up")  # as request() does when its timeout passes
    for _ in range(3):  # at-least-once upstream: a replay delivers each reply again
        client._deliver(reply("gave-up"))
        client._deliver(reply("fired"))  # submit()ted: nobody waits for it
    stats = client.stats
    assert (stats.late, stats.unsolicited, stats.duplicates) == (1, 1, 4)
