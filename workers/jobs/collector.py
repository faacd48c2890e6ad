"""The job collector: turns finished SageMaker Async jobs into the requests' final replies.

It polls S3 for each pending job's output object (``OutputLocation``) and failure object
(``FailureLocation``), with a per-job backoff (``poll_s``, doubling up to 16 times ``poll_s``), and
publishes one final reply (and its output event for the sinks) per job:

- output object → an ``ok`` reply with the generated text and tokens (``late`` if past the deadline);
- failure object → an ``error`` reply with SageMaker's reason;
- neither by ``deadline + give_up_s`` → an ``error`` reply saying the job never finished.

Pending jobs are read from the job store (S3), never only from memory, so a collector that
restarts (or one started after the jobs were submitted) finishes them. The reply is published
before the job is marked done: a crash between the two republishes it, a duplicate the client
recognises by request id and drops (at-least-once, like every other reply).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer

from pipeline import kafka
from pipeline.config import Settings
from pipeline.job_store import COMPLETED, FAILED, JobRecord, JobStore
from pipeline.lifecycle import Lifecycle
from pipeline.observability.cost import Pricing
from pipeline.readiness import mark_ready
from topics.catalogue import OUTPUTS, REPLIES, Tier
from topics.fields import ReplyStatus
from topics.headers import attempt
from topics.policy import RoutingPolicy
from topics.schemas import Output, Reply, Request, TierAttempt
from workers.engines.base import EngineResult
from workers.process import serve
from workers.replies import build_reply
from workers.serving import Job

log = logging.getLogger("npcflow.jobs")

#: Jobs looked at concurrently per poll (each look is one or two S3 GETs in a thread).
CHECK_CONCURRENCY = 16
MAX_BACKOFF_FACTOR = 16


@dataclass
class CollectorStats:
    completed: int = 0
    failed: int = 0
    gave_up: int = 0
    checks: int = 0


@dataclass
class _Watch:
    record: JobRecord
    checks: int = 0
    next_check: float = 0.0


def parse_output(raw: bytes) -> EngineResult:
    """SageMaker LLM containers' output: ``{"generated_text"...}``, a list of those, or plain text."""
    try:
        data: Any = json.loads(raw)
    except ValueError:
        text = raw.decode("utf-8", "replace")
        return EngineResult(text=text.strip(), prompt_tokens=0, completion_tokens=len(text.split()))
    if isinstance(data, list) and data:
        data = data[0]
    if not isinstance(data, dict):
        text = str(data)
        return EngineResult(text=text.strip(), prompt_tokens=0, completion_tokens=len(text.split()))
    text = str(data.get("generated_text") or data.get("text") or "")
    details = data.get("details") or {}
    completion = int(details.get("generated_tokens") or len(text.split()))
    prompt = int(details.get("prompt_tokens") or 0)
    return EngineResult(text=text.strip(), prompt_tokens=prompt, completion_tokens=completion)


class JobCollector(Lifecycle):
    """``start()``, ``run()`` until :meth:`request_stop`, ``stop()``; one per pipeline is enough."""

    def __init__(
        self, settings: Settings, policy: RoutingPolicy | None = None, store: JobStore | None = None
    ) -> None:
        self.settings = settings
        self.config = settings.engines.sagemaker
        self.policy = policy or RoutingPolicy.load(settings.policy_file)
        self.store = store or JobStore.from_settings(settings)
        self.stats = CollectorStats()
        self._watching: dict[str, _Watch] = {}
        self._producer: AIOKafkaProducer | None = None
        self._stopping = asyncio.Event()
        #: Never set: S3 and Kafka failures are retried at the next poll (the jobs stay pending).
        self.failure: BaseException | None = None
        self._default_reply_topic = REPLIES.name(settings.topic_prefix)
        self._outputs_topic = OUTPUTS.name(settings.topic_prefix)

    async def _start(self) -> None:
        await self.store.ensure_bucket()
        self._producer = kafka.producer(self.settings, "npcflow-jobs-collector", linger_ms=0)
        await self._producer.start()
        mark_ready(self.settings.process.ready_file, "job collector started")

    async def _stop(self) -> None:
        self._stopping.set()
        if self._producer is not None:
            await self._producer.stop()

    def request_stop(self) -> None:
        self._stopping.set()

    async def stopped(self) -> None:
        await self._stopping.wait()

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.poll_once()
            except Exception as exc:  # S3 or Kafka hiccup: the jobs stay pending, try again
                log.warning("job collector poll failed (%s); retrying", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.config.poll_s)

    async def poll_once(self) -> int:
        """Look at every due pending job once; returns how many were finished."""
        ids = set(await self.store.pending())
        for gone in set(self._watching) - ids:  # finished by another collector, or by us
            del self._watching[gone]
        now = time.monotonic()
        due = [i for i in ids if i not in self._watching or self._watching[i].next_check <= now]
        finished = 0
        for start in range(0, len(due), CHECK_CONCURRENCY):
            batch = due[start : start + CHECK_CONCURRENCY]
            results = await asyncio.gather(*(self._check(i) for i in batch), return_exceptions=True)
            for job_id, result in zip(batch, results, strict=True):
                if isinstance(result, BaseException):
                    log.warning("job %s: check failed (%s); will retry", job_id, result)
                elif result:
                    finished += 1
        return finished

    async def _check(self, job_id: str) -> bool:
        watch = self._watching.get(job_id)
        if watch is None:
            record = await self.store.get(job_id)
            if record is None or record.state != "pending":
                return False
            watch = self._watching[job_id] = _Watch(record)
        record = watch.record
        self.stats.checks += 1
        output = await self.store.read(record.output_location)
        if output is not None:
            await self._publish(record, self._reply(record, result=parse_output(output)), COMPLETED)
            self.stats.completed += 1
            return True
        failure = await self.store.read(record.failure_location) if record.failure_location else None
        if failure is not None:
            reason = failure.decode("utf-8", "replace").strip()[:1500] or "no reason given"
            await self._publish(record, self._reply(record, error=f"job {job_id} failed: {reason}"), FAILED)
            self.stats.failed += 1
            return True
        if time.time() * 1000 > record.deadline_ms + self.config.give_up_s * 1000:
            error = (
                f"job {job_id} never finished: no output or failure object "
                f"{self.config.give_up_s:g} s after its deadline"
            )
            await self._publish(record, self._reply(record, error=error), FAILED)
            self.stats.gave_up += 1
            return True
        watch.checks += 1
        factor = min(2 ** (watch.checks - 1), MAX_BACKOFF_FACTOR)
        watch.next_check = time.monotonic() + self.config.poll_s * factor
        return False

    def _reply(
        self, record: JobRecord, *, result: EngineResult | None = None, error: str | None = None
    ) -> Reply:
        request = Request.model_validate_json(json.dumps(record.request))
        job = Job(request, record.deadline_ms, request.reply_topic or self._default_reply_topic)
        before = [TierAttempt.model_validate(a, strict=False) for a in record.extra.get("chain_before", [])]
        if result is not None:
            chain = [*before, attempt(Tier.BRONZE, "served")]
            status = ReplyStatus.FALLBACK if before else ReplyStatus.OK
        else:
            status, chain = ReplyStatus.ERROR, [*before, attempt(Tier.BRONZE, "failed", (error or "")[:300])]
        reply = build_reply(
            job,
            Tier.BRONZE,
            status,
            float(record.submitted_at_ms),
            engine=record.engine,
            policy=self.policy,
            pricing=Pricing.from_settings(self.settings.observability),
            result=result,
            error=error,
            chain=chain,
        )
        return reply.model_copy(update={"job_id": record.job_id})

    async def _publish(self, record: JobRecord, reply: Reply, state: str) -> None:
        assert self._producer is not None, "start() first"
        key = reply.request_id.encode()
        request = Request.model_validate_json(json.dumps(record.request))
        topic = request.reply_topic or self._default_reply_topic
        reply_ack = await self._producer.send(topic, reply.to_bytes(), key=key)
        output_ack = await self._producer.send(
            self._outputs_topic, Output(request=request, reply=reply).to_bytes(), key=key
        )
        await reply_ack
        await output_ack
        record.state = state
        record.reply = json.loads(reply.to_bytes())
        record.error = reply.error
        record.finished_at_ms = reply.replied_at_ms
        await self.store.finish(record)
        self._watching.pop(record.job_id, None)
        log.info("job %s %s: final reply published to %s", record.job_id, state, topic)


async def run_collector(settings: Settings) -> None:
    """The ``npcflow run collector`` process: until SIGINT/SIGTERM."""
    collector = JobCollector(settings)
    await serve(collector, gc_gen0=settings.process.gc_gen0)
    log.info("job collector stopped: %s", collector.stats)


__all__ = ["CollectorStats", "JobCollector", "parse_output", "run_collector"]
