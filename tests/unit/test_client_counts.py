"""How the SDK counts the replies it reads (each reply once, by its first copy), and when it resends."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.client import NPCClient
from pipeline.config import Settings
from topics.catalogue import Tier
from topics.fields import ReplyStatus, ServedBy, Sla
from topics.schemas import Reply


def reply(request_id: str, status: ReplyStatus = ReplyStatus.OK, job_id: str | None = None) -> bytes:
    return Reply(
        request_id=request_id,
        npc_id="npc-1",
        tenant_id="gs",
        tier=Tier.GOLD,
        status=status,
        served_by=ServedBy.CACHE,
        replied_at_ms=1,
        job_id=job_id,
    ).to_bytes()


def test_a_replayed_late_or_unsolicited_reply_counts_once_then_as_a_duplicate() -> None:
    client = NPCClient(Settings(kafka_bootstrap="unused:9092"), tenant_id="gs")
    client._remember(client._given_up, "gave-up")  # as request() does when its timeout passes
    for _ in range(3):  # at-least-once upstream: a replay delivers each reply again
        client._deliver(reply("gave-up"))
        client._deliver(reply("fired"))  # submit()ted: nobody waits for it
    stats = client.stats
    assert (stats.late, stats.unsolicited, stats.duplicates) == (1, 1, 4)


async def test_a_request_accepted_as_a_job_is_not_resent() -> None:
    client = NPCClient(Settings(kafka_bootstrap="unused:9092"), tenant_id="gs")
    request = client.build_request("npc-1", "A story.", sla=Sla.ASYNC, latency_budget_ms=1_000)
    deadline_s = (request.created_at_ms + 1_000) / 1000
    assert client._resend_at(request, 0) == deadline_s + client.settings.client.resend_after_s
    client._pending[request.request_id] = asyncio.get_running_loop().create_future()  # request() waits
    client._deliver(reply(request.request_id, ReplyStatus.ACCEPTED, job_id="job-1"))
    assert client.jobs[request.request_id] == "job-1"
    assert client._resend_at(request, 0) is None


def test_a_request_is_resent_only_past_the_deadline_its_fallbacks_can_give_it() -> None:
    client = NPCClient(Settings(kafka_bootstrap="unused:9092"), tenant_id="gs")
    after_s = client.settings.client.resend_after_s
    silver = client.build_request("npc-1", "Hi.", sla=Sla.INTERACTIVE, latency_budget_ms=250)
    bronze_budget_s = client._policy.tiers[Tier.BRONZE].default_budget_ms / 1000
    # Silver forwards to Bronze by its deadline at the latest, and Bronze has its own budget from then.
    expected_s = (silver.created_at_ms + 250) / 1000 + bronze_budget_s + after_s
    assert client._resend_at(silver, 0) == pytest.approx(expected_s)
    assert client._resend_at(silver, client.settings.client.max_resends) is None
    unbudgeted = client.build_request("npc-1", "Hi.", sla=Sla.INTERACTIVE)
    assert client._resend_at(unbudgeted, 0) is None  # no deadline the client knows of
