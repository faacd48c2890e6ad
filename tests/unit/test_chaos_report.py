"""The chaos report's verdicts from a hand-made tally: recovery, loss and the flood's victim ratio.

The runs themselves are tests/integration/test_resilience.py; these pin what the figures mean.
"""

from __future__ import annotations

import time

from devstack.chaos import scenario
from devstack.chaos_report import Tally, recovery, report
from topics.catalogue import Tier
from topics.fields import ReplyStatus, ServedBy
from topics.schemas import Reply, TierAttempt


def reply(
    rid: str, status: ReplyStatus = ReplyStatus.OK, served: Tier = Tier.SILVER, tenant: str = "gs-quiet"
) -> Reply:
    return Reply(
        request_id=rid,
        npc_id="npc-1",
        tenant_id=tenant,
        tier=served,
        served_by=ServedBy.ENGINE,
        status=status,
        served_tier=served,
        chain=[TierAttempt(tier=Tier.SILVER, outcome="served" if served is Tier.SILVER else "failed")],
        replied_at_ms=int(time.time() * 1000),
    )


def answered(tally: Tally, rid: str, sent_at: float, latency_ms: float, r: Reply, label: str = "q") -> None:
    tally.sent += 1
    tally.sent_at[rid] = sent_at
    tally.replies[rid] = r
    tally.latency_ms[rid] = latency_ms
    tally.latencies.setdefault(label, []).append(latency_ms)


def test_recovery_is_the_last_reply_outside_the_budget_after_the_fault() -> None:
    spec = scenario("worker-kill")
    spec.budget_ms = 100
    tally = Tally(fault_t=5.0)
    answered(tally, "q1", 1.0, 10, reply("q1"))  # before the fault: not counted against it
    answered(tally, "q2", 5.5, 2_000, reply("q2"))  # slow, arrives at 7.5 s
    answered(tally, "q3", 6.0, 10, reply("q3", ReplyStatus.FALLBACK, served=Tier.BRONZE))  # at 6.01 s
    answered(tally, "q4", 8.0, 10, reply("q4"))
    assert recovery(spec, tally) == (2.5, {"silver": 2.5})


def test_an_unanswered_request_means_no_recovery_figure_and_counts_as_lost() -> None:
    spec = scenario("worker-kill")
    tally = Tally(fault_t=1.0)
    answered(tally, "q1", 2.0, 10, reply("q1"))
    tally.sent += 1
    tally.sent_at["q2"] = 2.5
    tally.timeouts += 1
    result = report(spec, tally, duplicates=0, dead_letters=0)
    assert result["lost"] == 1
    assert result["recovery_s"] is None and result["recovery_s_by_tier"] == {"silver": 0.0}
    assert result["recovered"] is False


def test_a_refused_request_is_not_lost() -> None:
    spec = scenario("worker-kill")
    spec.duration_s = 10
    tally = Tally(fault_t=1.0)
    answered(tally, "q1", 9.0, 10, reply("q1"))
    tally.sent += 1
    tally.refused += 1
    result = report(spec, tally, duplicates=2, dead_letters=None)
    assert (result["lost"], result["refused"], result["recovered"]) == (0, 1, True)
    assert result["duplicate_replies_dropped"] == 2 and result["dead_letters"] is None


def test_engine_outage_recovers_only_once_the_breaker_closed_and_silver_answers_the_tail() -> None:
    spec = scenario("engine-outage")
    spec.duration_s = 10
    tally = Tally(fault_t=2.0, breaker_states=["closed", "open", "half_open", "closed"])
    answered(tally, "q1", 3.0, 10, reply("q1", ReplyStatus.FALLBACK, served=Tier.BRONZE))
    answered(tally, "q2", 9.0, 10, reply("q2"))
    assert report(spec, tally, duplicates=0, dead_letters=0)["recovered"] is True
    tally.breaker_states.append("open")
    assert report(spec, tally, duplicates=0, dead_letters=0)["recovered"] is False


def test_tenant_flood_compares_the_victim_with_itself_alone_and_has_no_recovery_figure() -> None:
    spec = scenario("tenant-flood")
    tally = Tally()
    answered(tally, "q1", 1.0, 40, reply("q1"), "quiet:baseline")
    answered(tally, "q2", 20.0, 60, reply("q2"), "quiet:flood")
    answered(tally, "f1", 20.0, 5, reply("f1", ReplyStatus.FALLBACK, Tier.BRONZE, "gs-flood"), "flood:flood")
    result = report(spec, tally, duplicates=0, dead_letters=0)
    assert result["victim_ratio"] == 1.5
    assert result["victim_statuses"] == {"ok": 2} and result["flood_statuses"] == {"fallback": 1}
    assert "recovery_s" not in result
