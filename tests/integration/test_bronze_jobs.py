"""Bronze as SageMaker Async jobs, for real: S3 in (moto), boto3's invoke_endpoint_async against the
local SageMaker-compatible endpoint (embedded model), job id now, S3 out, collector, final reply.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from devstack.engine_servers import start_engine_servers
from devstack.supervise import stop_processes
from pipeline import kafka as kafka_clients
from pipeline.client import NPCClient
from pipeline.config import SageMakerSettings, Settings
from pipeline.job_store import JobRecord, JobStore
from tests.integration.kafka_util import eventually
from tests.integration.test_worker import running_worker
from topics.catalogue import TIER_TOPICS, Tier
from topics.fields import ReplyStatus, ServedBy, Sla
from topics.headers import attempt, deadline_headers, fallback_headers, now_ms
from topics.schemas import Reply, Request
from workers.engines.sagemaker_async import SageMakerAsyncEngine
from workers.jobs.collector import JobCollector


@pytest.fixture(scope="module")
def jobs_settings(settings: Settings, prefix: str, work_dir: Path) -> Iterator[Settings]:
    procs, env = start_engine_servers(
        settings, work_dir / "sagemaker", settings.s3_endpoint or "", names=["sagemaker"]
    )
    sagemaker = SageMakerSettings(url=env["NPCFLOW_SAGEMAKER_URL"], poll_s=0.2, give_up_s=0.5)
    try:
        yield settings.with_(topic_prefix=prefix, engines=settings.engines.with_(sagemaker=sagemaker))
    finally:
        stop_processes(procs)


def _bronze(i: int, max_tokens: int = 24) -> Request:
    return Request(
        request_id=f"job-{i}-{time.time_ns()}",
        npc_id=f"npc-{i}",
        tenant_id="gs-test",
        prompt="Tell the legend of the northern tower.",
        max_tokens=max_tokens,
        sla=Sla.ASYNC,
        created_at_ms=now_ms(),
    )


async def _send(
    producer: AIOKafkaProducer,
    settings: Settings,
    request: Request,
    budget_ms: int,
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    await producer.send_and_wait(
        TIER_TOPICS[Tier.BRONZE].name(settings.topic_prefix),
        request.to_bytes(),
        key=request.npc_id.encode(),
        headers=headers or deadline_headers(now_ms() + budget_ms, "bronze"),
    )


class _Running:
    """A collector running in the background for the ``async with`` block."""

    def __init__(self, settings: Settings) -> None:
        self.collector = JobCollector(settings)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> JobCollector:
        await self.collector.start()
        self.task = asyncio.create_task(self.collector.run())
        return self.collector

    async def __aexit__(self, *exc: object) -> None:
        self.collector.request_stop()
        assert self.task is not None
        await self.task
        await self.collector.stop()


async def test_a_job_is_accepted_now_and_answered_by_a_collector_started_later(
    jobs_settings: Settings,
) -> None:
    s = jobs_settings
    producer = kafka_clients.producer(s, "npcflow-test-jobs")
    await producer.start()
    try:
        async with (
            running_worker(s, s.topic_prefix, Tier.BRONZE, SageMakerAsyncEngine(s)),  # type: ignore[arg-type]
            NPCClient(s, "gs-test", prefix=s.topic_prefix) as client,
        ):
            request = _bronze(1)
            waiter = asyncio.create_task(client.request(request, timeout_s=90))
            await asyncio.sleep(0.2)
            await _send(producer, s, request, budget_ms=60_000)
            assert await eventually(lambda: request.request_id in client.jobs, 20), "no accepted notice"
            job_id = client.jobs[request.request_id]
            assert job_id == request.request_id and client.stats.notices == 1
            pending = await client.job(job_id)
            assert pending is not None and pending["state"] == "pending"
            assert pending["extra"]["ttl_s"] == 60 and pending["extra"]["invocation_timeout_s"] == 60

            # No collector runs: the job finishes on the endpoint and its output waits in S3.
            store = JobStore.from_settings(s)
            deadline = time.monotonic() + 60
            while await store.read(pending["output_location"]) is None:
                assert time.monotonic() < deadline, "the endpoint never wrote the output object"
                await asyncio.sleep(0.2)
            await asyncio.sleep(0.5)
            assert not waiter.done(), "nothing but the collector may send the final reply"

            # A collector started now finds the pending job in storage and replies.
            async with _Running(s) as collector:
                reply: Reply = await asyncio.wait_for(waiter, 30)
            assert collector.stats.completed == 1
    finally:
        await producer.stop()
    assert reply.status is ReplyStatus.OK and reply.served_by is ServedBy.ENGINE and not reply.late
    assert reply.text and reply.tokens.completion > 0 and reply.job_id == job_id
    assert reply.engine == "sagemaker-async:npcflow-bronze" and reply.tier is Tier.BRONZE
    done = await JobStore.from_settings(s).get(job_id)
    assert done is not None and done.state == "completed" and done.reply and done.reply["text"] == reply.text
    assert await JobStore.from_settings(s).pending() == []


async def _served_as_job(
    s: Settings, request: Request, budget_ms: int, headers: list[tuple[str, bytes]] | None = None
) -> tuple[Reply, JobCollector]:
    """``request`` sent to a Bronze worker on SageMaker with a collector running: its final reply."""
    producer = kafka_clients.producer(s, "npcflow-test-jobs")
    await producer.start()
    try:
        async with (
            running_worker(s, s.topic_prefix, Tier.BRONZE, SageMakerAsyncEngine(s)),  # type: ignore[arg-type]
            NPCClient(s, "gs-test", prefix=s.topic_prefix) as client,
            _Running(s) as collector,
        ):
            waiter = asyncio.create_task(client.request(request, timeout_s=60))
            await asyncio.sleep(0.2)
            await _send(producer, s, request, budget_ms, headers)
            return await asyncio.wait_for(waiter, 60), collector
    finally:
        await producer.stop()


async def test_a_job_that_times_out_on_the_endpoint_ends_in_an_error_reply(jobs_settings: Settings) -> None:
    # 1 s of budget → InvocationTimeoutSeconds=1, far too little for 400 tokens on a CPU.
    request = _bronze(2, max_tokens=400)
    reply, collector = await _served_as_job(jobs_settings, request, budget_ms=1_000)
    assert reply.status is ReplyStatus.ERROR and reply.job_id == request.request_id
    assert reply.error and "timed out" in reply.error and collector.stats.failed == 1


async def test_a_job_that_never_finishes_ends_in_an_error_reply(jobs_settings: Settings) -> None:
    s = jobs_settings
    store = JobStore.from_settings(s)
    await store.ensure_bucket()
    request = _bronze(3)
    missing = f"s3://{store.bucket}/nowhere/{request.request_id}"
    record = JobRecord(
        job_id=request.request_id,
        request=request.model_dump(mode="json", exclude_none=True),
        deadline_ms=now_ms() - 1_000,
        submitted_at_ms=now_ms() - 2_000,
        engine="sagemaker-async:npcflow-bronze",
        output_location=missing + ".out",
        failure_location=missing + ".fail",
    )
    async with NPCClient(s, "gs-test", prefix=s.topic_prefix) as client:
        waiter = asyncio.create_task(client.request(request, timeout_s=30))
        await asyncio.sleep(0.2)
        await store.put_pending(record)
        async with _Running(s) as collector:
            reply = await asyncio.wait_for(waiter, 30)
    assert reply.status is ReplyStatus.ERROR and reply.error and "never finished" in reply.error
    assert collector.stats.gave_up == 1
    assert (await store.get(request.request_id)).state == "failed"  # type: ignore[union-attr]


async def test_a_silver_request_that_fell_back_to_a_bronze_job_keeps_its_chain(
    jobs_settings: Settings,
) -> None:
    s = jobs_settings
    request = _bronze(4, max_tokens=8)
    silver_failed = attempt(Tier.SILVER, "failed", "deadline: the Silver engine stalled")
    headers = fallback_headers(
        Tier.BRONZE,
        now_ms() + 60_000,
        attempt=1,
        from_tier=Tier.SILVER,
        reason=silver_failed.reason,
        chain=[silver_failed],
        original_deadline_ms=now_ms() + 250,
    )
    reply, _ = await _served_as_job(s, request, 60_000, headers)
    # The final reply comes from the collector, long after the worker built the notice: it still
    # says the request fell back, from where and why.
    assert reply.status is ReplyStatus.FALLBACK and reply.served_tier is Tier.BRONZE, reply
    assert [(a.tier, a.outcome) for a in reply.chain] == [(Tier.SILVER, "failed"), (Tier.BRONZE, "served")]
    assert "stalled" in reply.chain[0].reason
