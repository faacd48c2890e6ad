"""Keeping the active set fresh, without a broker: the schedule's rules on a fake clock, the refresher
driving a scripted engine through the real refresh serving step, and the lease bookkeeping."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections import Counter

import pytest

from pipeline.config import ConfigError, IntentSettings, Settings
from pipeline.intents import GENERIC_PROMPT, ActiveAnnouncer
from topics.catalogue import Tier
from topics.schemas import ActiveNpc, Intent
from workers.engines.scripted import ScriptedEngine, ScriptedProfile
from workers.intents.active_refresh import ActiveRefresher, serving_step
from workers.intents.refresh_step import RefreshServing
from workers.intents.schedule import RefreshSchedule
from workers.intents.writer import IntentRefresh
from workers.resilience.admission import FairShare, LoadShedder
from workers.serving import ServingStats

T0 = 1_790_000_000_000.0
HZ = 2.0
PERIOD = 1000 / HZ


def active(npc: str, lease_ms: float = 60_000, now: float = T0, **extra: object) -> ActiveNpc:
    return ActiveNpc(
        npc_id=npc,
        tenant_id=str(extra.pop("tenant_id", "gs-1")),
        lease_until_ms=int(now + lease_ms),
        announced_at_ms=int(now),
        **extra,  # type: ignore[arg-type]
    )


def simulate(
    schedule: RefreshSchedule, start: float, seconds: float, *, capacity: int, service_ms: float, step_ms=5.0
) -> dict[str, list[float]]:
    """Run the schedule on a fake clock: launches when :meth:`take` says, each ends ``service_ms`` later."""
    launches: dict[str, list[float]] = {}
    running: list[tuple[float, str]] = []
    now = start
    while now < start + seconds * 1000:
        for end, npc in [r for r in running if r[0] <= now]:
            running.remove((end, npc))
            schedule.finished(npc, end, wrote=True)
        for entry in schedule.take(now, capacity - len(running)):
            launches.setdefault(entry.npc_id, []).append(now)
            running.append((now + service_ms, entry.npc_id))
        now += step_ms
    return launches


# -- the schedule ----------------------------------------------------------------------------


def test_refreshes_are_spread_over_the_period_at_the_set_rate() -> None:
    schedule = RefreshSchedule(HZ)
    for i in range(200):  # read back after a rebalance: each waits for its own grid point
        schedule.upsert(active(f"npc-{i}"), 0, T0, live=False)
    launches = simulate(schedule, T0, 5.0, capacity=1000, service_ms=5)
    assert len(launches) == 200
    per_npc = [len(times) for times in launches.values()]
    assert min(per_npc) >= 9 and max(per_npc) <= 11, Counter(per_npc)  # 2 Hz for 5 s
    every = sorted(t for times in launches.values() for t in times)
    buckets = Counter(int((t - T0) // 50) for t in every)  # 400/s → 20 per 50 ms on average
    assert max(buckets.values()) <= 40, max(buckets.values())
    assert len(buckets) >= 95  # no empty stretches: refreshes come all the time, not in bursts
    for times in launches.values():  # each NPC keeps to its own period
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(abs(g - PERIOD) <= 5 for g in gaps), gaps


def test_a_new_npc_is_refreshed_at_once_and_then_on_its_grid() -> None:
    schedule = RefreshSchedule(HZ)
    schedule.upsert(active("npc-new"), 0, T0, live=True)
    [entry] = schedule.take(T0, 10)
    assert entry.npc_id == "npc-new"
    schedule.finished("npc-new", T0 + 5, wrote=True)
    due = schedule.next_due_ms()
    assert due is not None and T0 + PERIOD / 2 <= due < T0 + 1.5 * PERIOD
    assert (due - schedule.phase("npc-new")) % PERIOD == pytest.approx(0, abs=1e-6)


def test_at_most_one_refresh_in_flight_per_npc() -> None:
    schedule = RefreshSchedule(HZ)
    schedule.upsert(active("npc-1"), 0, T0)
    assert [e.npc_id for e in schedule.take(T0, 10)] == ["npc-1"]
    for k in range(1, 8):  # an engine call that takes four periods: no second call meanwhile
        schedule.upsert(active("npc-1", now=T0 + k * 250), 0, T0 + k * 250)  # lease renewals
        assert schedule.take(T0 + k * 250, 10) == []
    schedule.finished("npc-1", T0 + 2000, wrote=True)  # it overran its grid points: due again at once
    assert [e.npc_id for e in schedule.take(T0 + 2000, 10)] == ["npc-1"]
    # Taken out of the set and announced again while its call still runs: it waits for that call.
    assert schedule.remove("npc-1")
    schedule.upsert(active("npc-1", now=T0 + 2010), 0, T0 + 2010, live=True)
    assert schedule.take(T0 + 2010, 10) == [] and schedule.in_flight == 1
    schedule.finished("npc-1", T0 + 2020, wrote=True)  # that call wrote an intent: next on the grid
    due = schedule.next_due_ms()
    assert due is not None and T0 + 2020 + PERIOD / 2 <= due < T0 + 2020 + 1.5 * PERIOD
    assert schedule.take(due - 1, 10) == [] and len(schedule.take(due, 10)) == 1


def test_without_capacity_every_rate_drops_evenly_oldest_intent_first() -> None:
    schedule = RefreshSchedule(HZ)
    npcs = [f"npc-{i}" for i in range(20)]
    for npc in npcs:
        schedule.upsert(active(npc), 0, T0, live=False)
    # 2 slots of 100 ms serve 20 refreshes a second; 20 NPCs at 2 Hz ask for 40.
    launches = simulate(schedule, T0, 20.0, capacity=2, service_ms=100)
    counts = [len(launches.get(npc, [])) for npc in npcs]
    assert sum(counts) >= 380 and max(counts) - min(counts) <= 2, counts  # ≈ 1 Hz each, evenly
    for times in launches.values():  # the age of any intent stays bounded: about N / capacity rate
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert max(gaps) <= 1500, max(gaps)
    stats = schedule.stats
    assert stats.asked == pytest.approx(20 * HZ * 20, rel=0.02)
    assert 0.45 <= stats.done / stats.asked <= 0.55  # half of what was asked: the shortfall


def test_a_waiting_npc_with_the_oldest_intent_goes_first() -> None:
    schedule = RefreshSchedule(HZ)
    for npc in ("a", "b", "c"):
        schedule.upsert(active(npc), 0, T0, live=True)
    first = [e.npc_id for e in schedule.take(T0, 3)]
    # Their refreshes end at different times: "c" has the oldest intent, then "a", then "b".
    schedule.finished(first[2], T0 + 10, wrote=True)
    schedule.finished(first[0], T0 + 20, wrote=True)
    schedule.finished(first[1], T0 + 30, wrote=True)
    now = T0 + 2000  # all three are due again; one slot at a time
    order = []
    for _ in range(3):
        [entry] = schedule.take(now, 1)
        order.append(entry.npc_id)
    assert order == [first[2], first[0], first[1]]


def test_an_ended_lease_leaves_the_set() -> None:
    schedule = RefreshSchedule(HZ)
    schedule.upsert(active("short", lease_ms=1200), 0, T0)
    schedule.upsert(active("long"), 0, T0)
    launched = simulate(schedule, T0, 3.0, capacity=10, service_ms=5)
    assert len(launched["short"]) <= 3 and len(launched["long"]) >= 6
    assert "short" not in schedule and "long" in schedule and len(schedule) == 1
    assert schedule.stats.expired_leases == 1
    schedule.upsert(active("old", lease_ms=-1), 0, T0 + 3000)  # a lease already over, read back
    assert "old" not in schedule


def test_a_revoke_drops_its_partitions_and_a_rebuild_does_not_burst() -> None:
    schedule = RefreshSchedule(HZ)
    for i in range(10):
        schedule.upsert(active(f"npc-{i}"), i % 2, T0, live=True)
    running = schedule.take(T0, 100)
    assert len(running) == 10
    gone = schedule.remove_partitions({0})
    assert sorted(gone) == sorted(f"npc-{i}" for i in range(0, 10, 2)) and len(schedule) == 5
    for i in range(0, 10, 2):  # their calls end; no next ones here
        assert schedule.finished(f"npc-{i}", T0 + 5, wrote=True) is None
    # The partition comes back (or goes to another worker): rebuilt from the topic, on the grid.
    for i in range(0, 10, 2):
        schedule.upsert(active(f"npc-{i}"), 0, T0 + 10, live=False)
    assert [e.npc_id for e in schedule.take(T0 + 10, 100)] == []
    due = [schedule.get(f"npc-{i}").due_ms for i in range(0, 10, 2)]  # type: ignore[union-attr]
    assert all(T0 + 10 <= d < T0 + 10 + PERIOD for d in due)


# -- the refresher: the real refresh serving step and a scripted engine ------------------------


class FakeClock:
    """Moved by the test; starts at the wall clock, which the refresh step checks deadlines against."""

    def __init__(self) -> None:
        self.ms = time.time() * 1000

    def __call__(self) -> float:
        return self.ms


class FakeProducer:
    """Records what the step sends to ``npc.intents`` (aiokafka's ``send``: queued → an ack future)."""

    def __init__(self) -> None:
        self.intents: list[Intent] = []

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[None]:
        assert topic == "p.npc.intents" and key == Intent.from_bytes(value).npc_id.encode()
        self.intents.append(Intent.from_bytes(value))
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        ack.set_result(None)
        return ack


def refresher_with(
    engine: ScriptedEngine, clock: FakeClock, capacity: int = 8
) -> tuple[ActiveRefresher, list[Intent]]:
    """A refresher whose step is the Gold worker's: the refresh serving step in a slot, then the record."""
    refreshing = RefreshServing(
        Tier.GOLD, engine, IntentRefresh(None, prefix="p."), ServingStats(), LoadShedder()
    )
    producer = FakeProducer()
    step = serving_step(refreshing, FairShare(capacity), lambda: producer)  # type: ignore[arg-type,return-value]
    settings = Settings(
        kafka_bootstrap="127.0.0.1:1", topic_prefix="p.", intents=IntentSettings(refresh_hz=HZ)
    )
    return ActiveRefresher(settings, step, capacity=capacity, clock=clock), producer.intents


async def test_the_refresher_writes_model_intents_for_watched_npcs_at_the_rate() -> None:
    clock, engine = FakeClock(), ScriptedEngine(ScriptedProfile())
    refresher, published = refresher_with(engine, clock)
    watched = active("npc-guard", archetype="guard", prompt="A wolf howls nearby.", now=clock.ms)
    refresher.apply(b"npc-guard", watched.to_bytes(), partition=3)
    refresher.apply(b"npc-plain", active("npc-plain", now=clock.ms).to_bytes(), partition=3)
    for _ in range(16):  # four seconds, a pump every 250 ms
        await asyncio.gather(*refresher.pump())
        clock.ms += 250
    by_npc = Counter(i.npc_id for i in published)
    assert set(by_npc) == {"npc-guard", "npc-plain"}
    assert all(7 <= n <= 9 for n in by_npc.values()), by_npc  # 2 Hz each: at once, then every 500 ms
    assert all(i.engine == engine.name and i.request_id and i.request_id.startswith("rf-") for i in published)
    first = published[0]
    assert first.intent.startswith(f"[{first.npc_id}] scripted")
    # What the model was asked: the NPC's situation and archetype, Gold's shape, its tenant's share.
    request = refresher.request(refresher.schedule.get("npc-guard"), clock.ms)  # type: ignore[arg-type]
    assert request.prompt == "A wolf howls nearby." and request.context == {"archetype": "guard"}
    assert request.max_tokens == 8 and request.tenant_id == "gs-1"
    assert refresher.request(refresher.schedule.get("npc-plain"), clock.ms).prompt == GENERIC_PROMPT  # type: ignore[arg-type]
    refresher.apply(b"npc-plain", None, partition=3)  # unwatched: a tombstone
    assert "npc-plain" not in refresher.schedule and "npc-guard" in refresher.schedule
    refresher.export()
    assert refresher.rates()["asked_hz"] == HZ


async def test_the_refresher_never_runs_more_than_its_capacity() -> None:
    clock, engine = FakeClock(), ScriptedEngine(ScriptedProfile(latency_ms=20))
    refresher, published = refresher_with(engine, clock, capacity=2)
    for i in range(6):
        refresher.apply(f"npc-{i}".encode(), active(f"npc-{i}", now=clock.ms).to_bytes(), partition=0)
    first = refresher.pump()
    assert len(first) == 2 and refresher.pump() == []  # full: the rest wait as state, not as calls
    assert refresher.schedule.waiting >= 4
    await asyncio.gather(*first)
    assert len(refresher.pump()) == 2 and refresher.in_flight == 2
    await asyncio.gather(*list(refresher._tasks))
    assert len(published) == 4


async def test_a_finished_refresh_wakes_a_loop_sleeping_past_the_npcs_next_turn() -> None:
    """One active NPC: while its refresh runs nothing is planned, so the loop sleeps its longest; the
    refresh's end must wake it, or the NPC would get one refresh per longest sleep (1 Hz, not 2)."""
    clock, engine = FakeClock(), ScriptedEngine(ScriptedProfile())
    refresher, published = refresher_with(engine, clock)
    refresher.apply(b"npc-1", active("npc-1", now=clock.ms).to_bytes(), partition=0)
    [task] = refresher.pump()
    refresher._sleep_until = clock.ms + 1000  # the loop's longest sleep, begun while npc-1 was in flight
    refresher._wake.clear()
    await task
    entry = refresher.schedule.get("npc-1")
    assert published and entry is not None and entry.due_ms < clock.ms + 1000
    assert refresher._wake.is_set()


async def test_a_failing_refresh_is_counted_and_the_npc_planned_again() -> None:
    clock, engine = FakeClock(), ScriptedEngine(ScriptedProfile(fail_every=1))
    refresher, published = refresher_with(engine, clock)
    refresher.apply(b"npc-1", active("npc-1", now=clock.ms).to_bytes(), partition=0)
    await asyncio.gather(*refresher.pump())
    assert published == [] and refresher.schedule.stats.failed == 1
    assert refresher.schedule.next_due_ms() is not None
    refresher.apply(b"npc-2", b"{not json", partition=0)
    assert refresher.undecodable == 1


# -- leases: what routers and game servers announce ------------------------------------------


def test_a_mark_is_announced_once_per_half_lease() -> None:
    clock = [1_000_000]
    announcer = ActiveAnnouncer(prefix="p.", lease_ms=10_000, tenant_id="router", clock=lambda: clock[0])
    first = announcer.mark("npc-1", archetype="wolf", prompt="Night falls.", tenant_id="gs-eu-1")
    assert first is not None and first.topic == "p.npc.active" and first.key == b"npc-1"
    record = ActiveNpc.from_bytes(first.value)
    assert record.lease_until_ms == 1_010_000 and record.archetype == "wolf" and record.tenant_id == "gs-eu-1"
    clock[0] += 5_000
    assert announcer.mark("npc-1") is None  # half the lease left: nothing to say
    clock[0] += 1
    assert announcer.mark("npc-1") is not None
    assert announcer.stats.announced == 2 and announcer.stats.deduped == 1
    announcer.forget("npc-1")  # its send failed: the next request announces it again
    assert announcer.mark("npc-1") is not None


def test_a_watch_is_renewed_until_unwatched() -> None:
    clock = [1_000_000]
    announcer = ActiveAnnouncer(lease_ms=4_000, tenant_id="gs-1", clock=lambda: clock[0])
    announcer.watch("npc-a", archetype="guard")
    announcer.watch("npc-b")
    assert announcer.watched == {"npc-a", "npc-b"} and announcer.renewals() == []
    clock[0] += 2_000
    renewed = announcer.renewals()
    assert sorted(a.npc_id for a in renewed) == ["npc-a", "npc-b"]
    assert ActiveNpc.from_bytes(renewed[0].value).lease_until_ms == clock[0] + 4_000
    tombstone = announcer.unwatch("npc-a")
    assert tombstone is not None and tombstone.value is None and announcer.unwatch("npc-a") is None
    clock[0] += 2_000
    assert [a.npc_id for a in announcer.renewals()] == ["npc-b"]


def test_the_refresh_rate_and_lease_are_range_checked() -> None:
    read = Settings.from_env
    assert read({}, stack_file=False).intents.refresh_hz == 2.0
    assert read({"NPCFLOW_GOLD_REFRESH_HZ": "1"}, stack_file=False).intents.refresh_period_ms == 1000
    for bad in ("0", "-1", "11", "nan", "fast"):
        with pytest.raises(ConfigError, match="NPCFLOW_GOLD_REFRESH_HZ"):
            read({"NPCFLOW_GOLD_REFRESH_HZ": bad}, stack_file=False)
    with pytest.raises(ConfigError, match="between 1000 and"):
        read({"NPCFLOW_GOLD_ACTIVE_LEASE_MS": "10"}, stack_file=False)
    with pytest.raises(ConfigError, match="NPCFLOW_GOLD_REFRESH_HZ"):  # the setting it replaced
        read({"NPCFLOW_INTENT_REFRESH_INTERVAL_MS": "500"}, stack_file=False)


def test_schedule_median_rate_matches_the_setting_with_capacity_to_spare() -> None:
    schedule = RefreshSchedule(1.0)
    for i in range(50):
        schedule.upsert(active(f"npc-{i}"), 0, T0, live=True)
    launches = simulate(schedule, T0, 10.0, capacity=64, service_ms=30)
    assert statistics.median(len(t) for t in launches.values()) in (10, 11)
