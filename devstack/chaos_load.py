"""Running a chaos scenario: start a pipeline, drive load through it, inject the fault, watch.

A :class:`Run` takes a :class:`~devstack.chaos.Scenario` (the pipeline's shape, the load, when
the fault comes) and a running embedded stack; it creates fresh topics, starts router and workers
as OS processes, drives load through :class:`~pipeline.client.NPCClient` (one per tenant), injects
the scenario's fault, watches Silver's breaker in Redis and counts dead letters. What it sees goes
into a :class:`~devstack.chaos_report.Tally`, which :func:`~devstack.chaos_report.report` judges.
The named scenarios and their defaults are in :mod:`devstack.chaos` (which says what each does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from devstack.broker_kill import BrokerRestart
from devstack.chaos import Scenario, scenario
from devstack.chaos_report import Tally, report
from devstack.endpoints import StackEndpoints
from devstack.processes import PipelineProcesses
from devstack.tracing import trace_requests
from pipeline import kafka
from pipeline.client import NPCClient, ReplyTimeout
from pipeline.config import Settings
from pipeline.topic_admin import create_embedded_topics
from topics.catalogue import DLQ, Tier
from topics.fields import Sla

log = logging.getLogger("npcflow.chaos")

Progress = Callable[[str], None]


def stderr_progress(line: str) -> None:
    """The default progress display: one line on stderr, rewritten in place."""
    sys.stderr.write("\r\033[K" + line)
    sys.stderr.flush()


class Run:
    """One scenario run against ``endpoints`` (a running embedded stack)."""

    def __init__(
        self,
        spec: Scenario,
        endpoints: StackEndpoints,
        work: Path,
        *,
        progress: Progress | None = stderr_progress,
        broker_restart: BrokerRestart | None = None,
    ) -> None:
        self.spec = spec
        self.endpoints = endpoints
        self.work = work
        self.progress = progress
        self.broker_restart = broker_restart
        self.prefix = f"chaos{uuid.uuid4().hex[:6]}."
        self.settings = endpoints.apply_to(Settings()).with_(topic_prefix=self.prefix)
        self.tally = Tally()
        #: Steps of the run's end that did not finish in time (see :meth:`_bounded`).
        self.stalls: list[str] = []
        self._t0 = 0.0
        self._t0_wall = 0.0

    # --- the pipeline ------------------------------------------------------------------------

    def _outage_engine(self, outage_at_ms: float) -> str:
        d = self.spec.duration_s * 1000
        return (
            f"scripted:latency_ms=5,outage_at_ms={outage_at_ms:.0f},"
            f"refuse_ms={d * 0.15:.0f},hang_ms={d * 0.15:.0f}"
        )

    def run(self) -> dict[str, Any]:
        asyncio.run(create_embedded_topics(self.settings, self.prefix))
        engines = dict(self.spec.engines)
        if self.spec.name == "engine-outage":
            # Workers take a few seconds to join; the outage is by the wall clock, so it is set
            # from when the load will start (after readiness), not from now.
            self._outage_at = time.time() * 1000 + 20_000
            engines[Tier.SILVER] = self._outage_engine(self._outage_at)
            d = self.spec.duration_s * 0.15
            self.tally.fault = f"silver engine refuses {d:.1f} s, then hangs {d:.1f} s, then recovers"
        procs = PipelineProcesses(
            self.endpoints.as_env() | {"NPCFLOW_TOPIC_PREFIX": self.prefix} | self.spec.env,
            self.work / self.prefix.rstrip("."),
            routers=self.spec.routers,
            workers=self.spec.workers,
            engines=engines,
            ready_timeout_s=90.0,
        )
        with procs:
            if self.spec.name == "engine-outage":
                wait_s = self._outage_at / 1000 - time.time() - self.spec.duration_s * self.spec.fault_at
                time.sleep(max(0.0, wait_s))
            result = asyncio.run(self._drive(procs))
        if self.progress:
            self.progress("")
            sys.stderr.write("\n")
        return result

    def _kill(self, procs: PipelineProcesses, name: str) -> None:
        for proc, _ in procs.procs:
            if proc.name == name:
                os.kill(proc.pid, signal.SIGKILL)
                self.tally.fault_t = time.monotonic() - self._t0
                self.tally.fault = f"SIGKILL {name} (pid {proc.pid})"
                return
        raise RuntimeError(f"no process {name}")

    async def _inject(self, procs: PipelineProcesses) -> None:
        """Inject the scenario's fault; runs beside the load (a broker restart takes seconds)."""
        name = self.spec.name
        if name == "worker-kill":
            self._kill(procs, "worker-silver-0")
        elif name == "router-kill":
            self._kill(procs, "router-0")
        elif name == "engine-outage":
            self.tally.fault_t = self._outage_at / 1000 - self._t0_wall
        elif name == "tenant-flood":
            spec = self.spec
            self.tally.fault = f"gs-flood sends {spec.rate * 10:g} req/s from t={spec.duration_s / 2:g} s"
        elif name == "broker-kill":
            if self.broker_restart is None:
                raise RuntimeError("broker-kill needs a broker it can restart (an embedded stack)")
            self.tally.fault = "SIGKILL broker"
            kill = self.tally.broker_kill = await self.broker_restart()
            self.tally.fault_t = kill.killed_at - self._t0
            self.tally.fault = kill.describe()

    # --- the load ----------------------------------------------------------------------------

    async def _drive(self, procs: PipelineProcesses) -> dict[str, Any]:
        spec = self.spec
        flood = spec.name == "tenant-flood"
        quiet = NPCClient(self.settings, tenant_id="gs-quiet")
        loud = NPCClient(self.settings, tenant_id="gs-flood") if flood else None
        clients = [c for c in (quiet, loud) if c is not None]
        for client in clients:
            await client.start()
        watcher = asyncio.create_task(self._watch_breaker())
        tasks: list[asyncio.Task[None]] = []
        self._t0, self._t0_wall = time.monotonic(), time.time()
        ticker = asyncio.create_task(self._show())
        try:
            await self._load(quiet, loud, procs, tasks)
            await asyncio.wait(tasks, timeout=spec.drain_s) if tasks else None
        finally:
            for task in (*tasks, watcher, ticker):
                task.cancel()
            await self._bounded(asyncio.gather(*tasks, watcher, ticker, return_exceptions=True), "cancel")
            duplicates = sum(c.stats.duplicates for c in clients)
            resent = sum(c.stats.resent for c in clients)
            for client in clients:
                await self._bounded(client.stop(), f"stop client {client.tenant_id}")
        dead = await self._bounded(self._dead_letters(), "count dead letters")
        result = report(self.spec, self.tally, duplicates=duplicates, dead_letters=dead)
        result["resent"] = resent  # overdue requests the SDK sent again (NPCClient.request)
        t = self.tally
        lost = [rid for rid in t.sent_at if rid not in t.replies and rid not in t.refused_ids]
        if lost:  # where each lost request was last seen: the lead for finding why
            trace = trace_requests(self.settings, self.prefix, lost[:20])
            result["lost_trace"] = await self._bounded(trace, "trace lost requests", 60.0)
        result["stalls"] = self.stalls
        return result

    async def _bounded(self, step: Awaitable[Any], what: str, seconds: float = 20.0) -> Any:
        """Await one step of the run's end, at most ``seconds``; a stall is reported, not waited out.

        A run once hung after its load (seen twice in 30 test runs, never reproduced on purpose):
        this names the step and logs every task's stack, so the next occurrence says where.
        """
        try:
            return await asyncio.wait_for(step, seconds)
        except TimeoutError:
            self.stalls.append(what)
            log.error("chaos run: %s took over %.0f s; tasks still pending:", what, seconds)
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.print_stack(limit=8, file=sys.stderr)
            return None

    async def _load(
        self,
        quiet: NPCClient,
        loud: NPCClient | None,
        procs: PipelineProcesses,
        tasks: list[asyncio.Task[None]],
    ) -> None:
        spec = self.spec
        start = time.monotonic()
        fault_t = spec.duration_s * spec.fault_at
        injected = spec.name == "engine-outage"
        owed = {"quiet": 0.0, "flood": 0.0}
        n = 0
        tick = 0.01
        # The fault runs as a task of its own: the load goes on while a broker is down and restarts.
        fault: asyncio.Task[None] | None = None
        while (elapsed := time.monotonic() - start) < spec.duration_s:
            if not injected and elapsed >= fault_t:
                injected = True
                fault = asyncio.create_task(self._inject(procs))
            if fault is not None and fault.done():
                fault.result()  # a fault that could not be injected ends the run now, with its error
            phase = "baseline" if elapsed < spec.duration_s / 2 else "flood"
            owed["quiet"] += spec.rate * tick
            if loud is not None and phase == "flood":
                owed["flood"] += spec.rate * 10 * tick
            for who, client in (("quiet", quiet), ("flood", loud)):
                while client is not None and owed[who] >= 1:
                    owed[who] -= 1
                    n += 1
                    label = who if loud is None else f"{who}:{phase}"
                    tasks.append(asyncio.create_task(self._one(client, n, label)))
            await asyncio.sleep(tick)
        await (fault if fault is not None else self._inject(procs))

    async def _one(self, client: NPCClient, n: int, label: str) -> None:
        request = client.build_request(
            f"npc-{n % 200}",
            "Where is the mill?",
            max_tokens=16,
            sla=Sla.INTERACTIVE,
            latency_budget_ms=self.spec.budget_ms,
            request_id=f"{client.tenant_id[3]}{n:07d}-{uuid.uuid4().hex[:6]}",
        )
        self.tally.sent += 1
        started = time.monotonic()
        self.tally.sent_at[request.request_id] = started - self._t0
        try:
            reply = await client.request(request, timeout_s=self.spec.duration_s + self.spec.drain_s + 30)
        except (ReplyTimeout, ConnectionError):
            self.tally.timeouts += 1
            return
        except KafkaError as exc:
            log.warning("request %s refused by the broker: %s", request.request_id, exc)
            self.tally.refused += 1
            self.tally.refused_ids.add(request.request_id)
            return
        latency_ms = (time.monotonic() - started) * 1000
        self.tally.replies[request.request_id] = reply
        self.tally.latency_ms[request.request_id] = latency_ms
        self.tally.latencies.setdefault(label, []).append(latency_ms)

    async def _watch_breaker(self) -> None:
        import redis.asyncio as redis

        r = redis.Redis.from_url(self.settings.redis_url or "", decode_responses=True)
        key = f"npcflow:breaker:{self.prefix}tier:silver"
        try:
            while True:
                state = (await r.hget(key, "state")) or "closed"
                if not self.tally.breaker_states or self.tally.breaker_states[-1] != state:
                    self.tally.breaker_states.append(state)
                await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            raise
        except Exception:  # the breaker view is a report, never a reason to stop the load
            return
        finally:
            with contextlib.suppress(Exception):
                await r.aclose()

    async def _show(self) -> None:
        while self.progress:
            t = time.monotonic() - self._t0
            statuses = Counter(r.status.value for r in self.tally.replies.values())
            breaker = self.tally.breaker_states[-1] if self.tally.breaker_states else "closed"
            self.progress(
                f"[{self.spec.name}] t={t:5.1f}s sent={self.tally.sent} replied={len(self.tally.replies)} "
                f"{dict(statuses)} breaker={breaker} {self.tally.fault}"
            )
            await asyncio.sleep(0.5)

    async def _dead_letters(self) -> int | None:
        """Records on the run's dead-letter topic; None if the topic could not be read."""
        consumer = kafka.consumer(self.settings, "chaos-dlq")
        await consumer.start()
        try:
            topic = DLQ.name(self.prefix)
            partitions = consumer.partitions_for_topic(topic)
            deadline = time.monotonic() + 10.0
            # The first metadata can lack the topic (seen once after a broker-kill, when a broker
            # had just restarted): ask again rather than report 0.
            while not partitions and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                await consumer._client.force_metadata_update()  # aiokafka has no public refresh
                partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                log.warning("dead-letter topic %s not in the metadata: dead letters not counted", topic)
                return None
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            count, quiet_since = 0, time.monotonic()
            while time.monotonic() - quiet_since < 1.0:
                batches = await consumer.getmany(timeout_ms=200)
                got = sum(len(v) for v in batches.values())
                count += got
                if got:
                    quiet_since = time.monotonic()
            return count
        finally:
            await consumer.stop()


def run_scenario(
    name: str,
    endpoints: StackEndpoints,
    work: Path,
    *,
    duration_s: float | None = None,
    rate: float | None = None,
    progress: Progress | None = stderr_progress,
    broker_restart: BrokerRestart | None = None,
) -> dict[str, Any]:
    """Run one scenario on a running stack and return its report (see :mod:`devstack.chaos`)."""
    spec = scenario(name, duration_s, rate)
    return Run(spec, endpoints, work, progress=progress, broker_restart=broker_restart).run()
