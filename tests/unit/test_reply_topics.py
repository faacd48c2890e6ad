"""The reply-topic cache: misses refresh from metadata, but at most once per interval."""

from __future__ import annotations

import asyncio

from pipeline.reply_topics import ReplyTopics


class Cluster:
    def __init__(self, *topics: str) -> None:
        self.topics = set(topics)
        self.lookups = 0

    async def lookup(self) -> set[str]:
        self.lookups += 1
        await asyncio.sleep(0)
        return set(self.topics)


async def test_a_known_topic_needs_one_lookup_and_a_missing_one_is_counted() -> None:
    cluster = Cluster("npc.replies.a")
    topics = ReplyTopics(cluster.lookup, refresh_s=60)
    assert await topics.exists("npc.replies.a") and await topics.exists("npc.replies.a")
    assert not await topics.exists("npc.replies.b")
    assert cluster.lookups == 1 and topics.missing == 1


async def test_a_flood_of_misses_makes_one_lookup_per_interval() -> None:
    cluster = Cluster()
    topics = ReplyTopics(cluster.lookup, refresh_s=60)
    results = await asyncio.gather(*(topics.exists(f"npc.replies.x{i}") for i in range(100)))
    assert not any(results) and cluster.lookups == 1 and topics.missing == 100


async def test_a_topic_registered_later_is_seen_after_the_interval() -> None:
    cluster = Cluster()
    topics = ReplyTopics(cluster.lookup, refresh_s=0.05)
    assert not await topics.exists("npc.replies.a")
    cluster.topics.add("npc.replies.a")
    await asyncio.sleep(0.06)
    assert await topics.exists("npc.replies.a")
