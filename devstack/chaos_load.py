"""The machinery under the chaos scenarios: start a pipeline, drive load, inject the fault, measure.

A :class:`Run` takes a :class:`Scenario` (the pipeline's shape, the load, when the fault comes)
and a running embedded stack; it creates fresh topics, starts router and workers as OS processes,
drives load through :class:`~pipeline.client.NPCClient` (one per tenant), injects the scenario's
fault, watches Silver's breaker in Redis, counts dead letters and reports, with how long after the
fault every tier answered within budget again (``recovery_s``). The named scenarios
and their defaults are in :mod:`devstack.chaos` (which says what each does); this module is kept
apart so the definitions read alone.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from devstack.broker_kill import BrokerKill, BrokerRestart
from devstack.endpoints import StackEndpoints
from devstack.processes import PipelineProcesses
from devstack.tracing import trace_requests
from pipeline import kafka
from pipeline.client import NPCClient, ReplyTimeout
from pipeline.config import Settings
from pipeline.observability.metrics import percentiles
from pipeline.topic_admin import create_embedded_topics
from topics.catalogue import DLQ, Tier
from topics.fields import ReplyStatus, Sla
from topics.schemas import Reply

log = logging.getLogger("npcflow.chaos")

Progress = Callable[[str], None]


def stderr_progress(line: str) -> None:
    """The default progress display: one line on stderr, rewritten in place."""
    sys.stderr.write("\r\033[K" + line)
    sys.stderr.flush()


@dataclass
class Scenario:
    """What to run: the pipeline's shape, the load, and the fault at ``fault_at`` (fraction of the run)."""

    name: str
    duration_s: float = 20.0
    #: Requests per second of the main (or quiet) tenant.
    rate: float = 40.0
    fault_at: float = 1 / 3
    routers: int = 1
    workers: dict[Tier, int] = field(default_factory=lambda: {Tier.SILVER: 1, Tier.BRONZE: 1})
    engines: dict[Tier, str] = field(
        default_factory=lambda: {Tier.SILVER: "scripted:latency_ms=5", Tier.BRONZE: "scripted:latency_ms=5"}
    )
    env: dict[str, str] = field(default_factory=dict)
    #: The budget requests ask for: kill scenarios are about delivery, so they allow a rebalance.
    budget_ms: int = 250
    #: How long to wait after the last request for every reply.
    drain_s: float = 45.0


@dataclass
class Tally:
    sent: int = 0
    replies: dict[str, Reply] = field(default_factory=dict)
    timeouts: int = 0
    #: Requests the broker never acknowledged (the produce failed while it was down): the game
    #: server got an error at once, so they were never accepted and cannot be lost.
    refused: int = 0
    refused_ids: set[str] = field(default_factory=set)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    #: Request id → seconds from the start of the load until it was sent / until its reply came (ms).
    sent_at: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)


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
        self.breaker_states: list[str] = []
        self.fault = ""
        self.fault_done_at = 0.0
        #: Seconds from the start of the load until the fault struck (None: not yet, or no one instant).
        self.fault_t: float | None = None
        self.broker_kill: BrokerKill | None = None
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
            self.fault = f"silver engine refuses {d:.1f} s, then hangs {d:.1f} s, then recovers"
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
                self.fault_t = time.monotonic() - self._t0
                self.fault = f"SIGKILL {name} (pid {proc.pid})"
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
            self.fault_t = self._outage_at / 1000 - self._t0_wall
        elif name == "tenant-flood":
            self.fault = f"gs-flood sends {self.spec.rate * 10:g} req/s from t={self.spec.duration_s / 2:g} s"
        elif name == "broker-kill":
            if self.broker_restart is None:
                raise RuntimeError("broker-kill needs a broker it can restart (an embedded stack)")
            self.fault = "SIGKILL broker"
            kill = self.broker_kill = await self.broker_restart()
            self.fault_t = kill.killed_at - self._t0
            self.fault = kill.describe()
        self.fault_done_at = time.monotonic()

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
        result = self._result(duplicates, dead)
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
                if not self.breaker_states or self.breaker_states[-1] != state:
                    self.breaker_states.append(state)
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
            breaker = self.breaker_states[-1] if self.breaker_states else "closed"
            self.progress(
                f"[{self.spec.name}] t={t:5.1f}s sent={self.tally.sent} replied={len(self.tally.replies)} "
                f"{dict(statuses)} breaker={breaker} {self.fault}"
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

    # --- the report --------------------------------------------------------------------------

    @staticmethod
    def _routed_tier(reply: Reply) -> Tier:
        """The tier the router sent the request to: the chain's first (``tier`` is the one that replied)."""
        return reply.chain[0].tier if reply.chain else reply.tier

    def _within_budget(self, rid: str, reply: Reply) -> bool:
        """Answered as the game asked: by the tier it was routed to, ``ok``, within the request's budget.

        The latency is the caller's (sent → reply in hand), the one a player waits; a fallback or
        an ``expired`` reply is an answer, but not the tier answering within budget.
        """
        return (
            reply.status is ReplyStatus.OK
            and not reply.late
            and reply.served_tier is self._routed_tier(reply)
            and self.tally.latency_ms[rid] <= self.spec.budget_ms
        )

    def _recovery(self) -> tuple[float | None, dict[str, float]] | None:
        """Seconds from the fault until every loaded tier answers within budget again, and per tier.

        Measured from the replies: a tier has recovered once the last reply it gave outside its
        budget (or not ``ok``) has arrived; every later one was within. A tier that never answered
        badly after the fault recovered at once (0). Tiers are those the requests were routed to
        (the reply's chain), so this covers whichever of gold, silver and bronze the scenario loads.
        An accepted request with no reply at all is an outage without end: the first figure is then None.
        None (no figure) where the fault has no one instant (``tenant-flood``: it lasts to the end).
        """
        if self.fault_t is None or self.spec.name == "tenant-flood":
            return None
        t = self.tally
        fault_t = self.fault_t
        last_bad: dict[str, float] = {}
        for rid, sent in t.sent_at.items():
            reply = t.replies.get(rid)
            if reply is None:
                continue  # refused (never accepted) or unanswered (counted below)
            tier = self._routed_tier(reply).value
            last_bad.setdefault(tier, fault_t)
            arrived = sent + t.latency_ms[rid] / 1000
            if arrived > fault_t and not self._within_budget(rid, reply):
                last_bad[tier] = max(last_bad[tier], arrived)
        by_tier = {tier: round(at - fault_t, 2) for tier, at in sorted(last_bad.items())}
        unanswered = t.sent - t.refused - len(t.replies)
        return (None if unanswered or not by_tier else max(by_tier.values())), by_tier

    def _result(self, duplicates: int, dead_letters: int | None) -> dict[str, Any]:
        t = self.tally
        replies = list(t.replies.values())
        statuses = Counter(r.status.value for r in replies)
        fallbacks = statuses.get(ReplyStatus.FALLBACK.value, 0)
        opened = "open" in self.breaker_states
        tail_from = self.spec.duration_s * 0.8
        tail = [rid for rid, at in t.sent_at.items() if at >= tail_from]
        if self.spec.name == "tenant-flood":  # the flood itself is meant to be degraded
            tail = [rid for rid in tail if rid.startswith("q")]
        tail_ok = [
            rid
            for rid in tail
            if rid in t.replies and t.replies[rid].status is ReplyStatus.OK and t.replies[rid].served_tier
        ]
        if self.spec.name == "engine-outage":
            # Recovered: the breaker closed again and Silver itself answers the last fifth of the run.
            recovered = (
                opened
                and self.breaker_states[-1] == "closed"
                and bool(tail)
                and all(t.replies[r].served_tier is Tier.SILVER for r in tail_ok)
                and len(tail_ok) >= 0.9 * len(tail)
            )
        else:
            recovered = t.timeouts == 0 and bool(tail) and len(tail_ok) == len(tail)
        recovery = self._recovery()
        if self.spec.name == "broker-kill":
            # The cluster healed too: the restarted broker is back in every ISR, so the next kill
            # would again find two replicas of each record.
            recovered = recovered and self.broker_kill is not None and self.broker_kill.in_sync_at is not None
            recovered = recovered and recovery is not None and recovery[0] is not None
        result: dict[str, Any] = {
            "scenario": self.spec.name,
            "sent": t.sent,
            "replied_once": len(replies),
            "duplicates_delivered": 0,  # NPCClient hands each request id to the caller once
            "lost": t.sent - t.refused - len(replies),
            "refused": t.refused,
            "dead_letters": dead_letters,
            "fallbacks": fallbacks,
            "breaker_opened": opened,
            "recovered": recovered,
            "duplicate_replies_dropped": duplicates,
            "statuses": dict(statuses),
            "breaker_states": self.breaker_states,
            "fault": self.fault,
            "budget_ms": self.spec.budget_ms,
            "p95_ms": percentiles([x for v in t.latencies.values() for x in v])["p95"],
        }
        if recovery is not None:
            result["recovery_s"], result["recovery_s_by_tier"] = recovery
        if self.broker_kill is not None:
            result["broker_kill"] = {
                "node": self.broker_kill.node,
                "leader_of": self.broker_kill.leader_of,
                **self.broker_kill.timings(),
            }
        if self.spec.name == "tenant-flood":
            victim = percentiles(t.latencies.get("quiet:flood", []))["p95"]
            baseline = percentiles(t.latencies.get("quiet:baseline", []))["p95"]
            result |= {
                "victim_p95_ms": victim,
                "victim_baseline_p95_ms": baseline,
                "victim_ratio": round(victim / baseline, 2) if victim and baseline else None,
                "flood_statuses": dict(Counter(r.status.value for r in replies if r.tenant_id == "gs-flood")),
                "victim_statuses": dict(
                    Counter(r.status.value for r in replies if r.tenant_id == "gs-quiet")
                ),
            }
        return result
