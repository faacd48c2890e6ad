"""Commit points while records of one partition finish out of order."""

from aiokafka import TopicPartition

from workers.tier_worker import OffsetTracker

TP = TopicPartition("npc.requests.gold", 0)


def test_commit_point_waits_for_the_oldest_record_in_flight() -> None:
    t = OffsetTracker()
    for offset in (10, 11, 12):
        t.started(TP, offset)
    t.finished(TP, 12)
    t.finished(TP, 11)
    assert t.to_commit() == {TP: 10}  # 10 still running: committing 12 would lose it on a crash
    t.committed({TP: 10})
    assert t.to_commit() == {}
    t.finished(TP, 10)
    assert t.to_commit() == {TP: 13}
    assert t.in_flight() == 0


def test_forget_drops_revoked_partitions() -> None:
    t = OffsetTracker()
    t.started(TP, 5)
    t.forget({TP})
    assert t.to_commit() == {} and t.in_flight() == 0
