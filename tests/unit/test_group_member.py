"""The consumer-group side shared by the tier worker and the sink runner, without a broker."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiokafka import TopicPartition

from pipeline.config import Settings
from workers.group_member import GroupMember, _Listener, past

A, B, C = (TopicPartition("t", p) for p in range(3))


@dataclass
class Rec:
    topic: str
    partition: int
    offset: int


@dataclass
class Consumer:
    """What the member calls on aiokafka's consumer."""

    owned: set[TopicPartition]
    seeks: list[tuple[TopicPartition, int]] = field(default_factory=list)
    commits: list[dict[TopicPartition, int]] = field(default_factory=list)

    def assignment(self) -> set[TopicPartition]:
        return self.owned

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))


async def member(owned: set[TopicPartition], seen: list[tuple[int, object]]) -> tuple[GroupMember, Consumer]:
    """A member the group assigned ``owned`` (through the rebalance listener, as aiokafka does)."""

    async def on_revoke(partitions: set[TopicPartition] | None) -> None:
        seen.append((m.generation, partitions))

    m = GroupMember(
        Settings(kafka_bootstrap="unused:9092"),
        name="test",
        client_id="c",
        group_id="g",
        topic="t",
        on_revoke=on_revoke,
    )
    consumer = Consumer(owned)
    m._consumer = consumer  # type: ignore[assignment]
    await _Listener(m).on_partitions_assigned(owned)
    return m, consumer


async def test_a_revoke_makes_earlier_fetches_stale_before_the_owner_releases() -> None:
    seen: list[tuple[int, object]] = []
    m, _ = await member({A}, seen)
    before = m.generation
    await m.release({A})
    assert not m.current(before) and m.current(m.generation)
    assert seen == [(before + 1, {A})]  # the owner already sees the new generation


async def test_seek_back_goes_to_the_first_abandoned_record_of_each_partition_still_owned() -> None:
    m, consumer = await member({A, B}, [])
    m.seek_back([Rec("t", 0, 7), Rec("t", 0, 5), Rec("t", 1, 9), Rec("t", 2, 1)])
    assert sorted(consumer.seeks) == [(A, 5), (B, 9)]  # C is someone else's now


async def test_only_owned_partitions_are_committed_one_past_the_highest_done() -> None:
    m, consumer = await member({A}, [])
    done = past([Rec("t", 0, 3), Rec("t", 0, 4), Rec("t", 2, 8)])
    assert done == {A: 5, C: 9}
    assert await m.commit(done) == {A: 5}
    assert consumer.commits == [{A: 5}]
    assert await m.commit({C: 9}) == {} and len(consumer.commits) == 1


async def test_a_revoked_partition_is_owned_until_released_then_not_until_assigned_again() -> None:
    """aiokafka's ``assignment()`` lists revoked partitions until the next assignment; the member
    stops owning them once the owner has released them, so nothing commits or seeks them after."""
    committed_in_release: list[dict[TopicPartition, int]] = []

    async def on_revoke(partitions: set[TopicPartition] | None) -> None:
        committed_in_release.append(await m.commit({A: 3, B: 4}))

    m, consumer = await member({A, B}, [])
    m._on_revoke = on_revoke
    listener = _Listener(m)
    await listener.on_partitions_revoked({A, B})
    assert committed_in_release == [{A: 3, B: 4}]  # the owner still commits what it finished
    assert consumer.assignment() == {A, B} and m.owned() == set()  # mid-rebalance: nothing is ours
    assert await m.commit({A: 5}) == {}
    m.seek_back([Rec("t", 0, 1)])
    assert consumer.seeks == []
    await listener.on_partitions_assigned({B})
    assert m.owned() == {B}
