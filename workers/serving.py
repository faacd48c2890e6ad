"""Serving one routed request, with no Kafka: record in, the records to produce out.

The steps, in order (docs/architecture.md, "One request"):

1. :meth:`Serving.accept` — parse and validate the record with the router's own rules (poison,
   or a reply topic outside the tenant's reply-topic family → :class:`DeadLettered` with the
   reason), read the deadline from its header (or the tier's default budget from
   ``created_at_ms``) and pick the reply topic.
2. The worker loop waits for an engine slot (that bound is Kafka-side work: it is what a
   rebalance can hand back).
3. :meth:`Serving.serve` — already past the deadline → an ``expired`` reply without an engine
   call; otherwise call the engine (an :class:`~workers.engines.base.EngineError`, a timeout
   included, → an ``error`` reply), then build the reply and its output event once:
   :class:`Replied`. A Gold refresh job (``Job.refresh``) goes to its own step instead,
   :class:`~workers.intents.refresh_step.RefreshServing`, which writes an intent and never replies.

Metrics, cost accounting and anything else that only observes are :class:`Hooks` called with
each outcome as it is built (see :mod:`workers.hooks`). Behaviour that changes the answer
(fallback, breakers, caches) is an engine wrapper (:mod:`workers.resilience`) or a new step
here, never a branch in the worker loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pipeline.observability import metrics
from pipeline.observability.cost import Pricing
from topics.catalogue import DLQ, OUTPUTS, REPLIES, Tier
from topics.fields import ReplyStatus
from topics.headers import FallbackContext, attempt, is_refresh, read_deadline
from topics.policy import RoutingPolicy
from topics.rejections import DeadLetter, parse_request
from topics.schemas import FieldError, InvalidEvent, Output, Reply, Request, TierAttempt
from workers.engines.base import CallContext, Engine, EngineError, EngineResult
from workers.intents.writer import IntentRefresh, IntentUpdate, Refreshed
from workers.replies import Outbound, build_reply
from workers.resilience.admission import LoadShedder
from workers.resilience.exceptions import DeadlineReached, reason_kind
from workers.resilience.fallback import FallbackStep, Forwarded

log = logging.getLogger("npcflow.worker")


class IncomingRecord(Protocol):
    """What serving reads of a consumed record (aiokafka's ``ConsumerRecord`` is one)."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


@dataclass(frozen=True)
class Job:
    """An accepted request, waiting for an engine slot."""

    request: Request
    deadline_ms: int
    reply_topic: str
    #: A Gold model refresh the router already answered: it updates the intent, never replies.
    refresh: bool = False
    #: The record's value, re-published as is when the request falls back to the next tier.
    raw: bytes = b""
    #: Tiers this request went through before this one (from the fallback headers).
    chain: tuple[TierAttempt, ...] = ()
    attempt: int = 0


@dataclass(frozen=True)
class Replied:
    """The reply (to the request's reply topic) and its output event (to ``npc.outputs``)."""

    reply: Reply
    #: None for an ``accepted`` notice: only the job's final reply is an output for the sinks.
    output: Output | None
    reply_topic: str
    outputs_topic: str
    #: Gold: the model result as the NPC's new intent, for ``npc.intents``.
    intent_update: IntentUpdate | None = None
    #: The request as it came in (valid JSON the strict schema accepted): the output embeds it
    #: instead of serialising the parsed request again. Empty: serialise it.
    request_bytes: bytes = b""

    @property
    def key(self) -> bytes:
        """Both records are keyed by request id."""
        return self.reply.request_id.encode()

    def records(self) -> list[Outbound]:
        """The reply and its output at once (one produce request); the intent batched. The reply
        is serialised once: the output embeds those same bytes."""
        key, reply = self.key, self.reply.to_bytes()
        records = [Outbound(self.reply_topic, key, reply, urgent=True)]
        if self.output is not None:
            output = Output.wire(self.request_bytes or self.output.request.to_bytes(), reply)
            # Rides with the reply: both are queued before the producer's sender runs, so they
            # share the reply's produce request instead of costing one of their own on the
            # lingering producer (docs/architecture.md §5, "Outputs ride with their reply").
            records.append(Outbound(self.outputs_topic, key, output, urgent=True))
        if self.intent_update is not None:
            records.append(self.intent_update.outbound())
        return records


@dataclass(frozen=True)
class DeadLettered:
    """The dead-letter record for a record that cannot be served, keyed by its source topic."""

    letter: DeadLetter
    topic: str

    @property
    def key(self) -> bytes:
        return self.letter.source_topic.encode()

    def records(self) -> list[Outbound]:
        return [Outbound(self.topic, self.key, self.letter.to_bytes())]


Outcome = Replied | DeadLettered | Refreshed | Forwarded
ReplyHook = Callable[[Replied], None]
DeadLetterHook = Callable[[DeadLettered], None]


class ServingStep(Protocol):
    """What the worker loop asks of the step that serves an accepted job: a request's
    (:class:`Serving`) or a Gold refresh's (:class:`~workers.intents.refresh_step.RefreshServing`).

    ``shed`` runs before the job queues for an engine slot (None: queue it); ``serve`` once a
    slot is the caller's.
    """

    def shed(self, job: Job, expected_wait_ms: float, service_ms: float | None) -> Outcome | None: ...

    async def serve(self, job: Job) -> Outcome: ...


@dataclass
class Hooks:
    """Observers called with each outcome as serving builds it (arq's ``on_job_end``).

    Hooks must be quick and must not block: they run on the serving path. One that raises is
    logged and skipped; it never costs a request its reply. An outcome whose records Kafka then
    refuses is replayed, so a hook can see a request twice, as at-least-once allows.
    """

    on_reply: list[ReplyHook] = field(default_factory=list)
    on_dead_letter: list[DeadLetterHook] = field(default_factory=list)

    def replied(self, outcome: Replied) -> None:
        for hook in self.on_reply:
            _call(hook, outcome)

    def dead_lettered(self, outcome: DeadLettered) -> None:
        for hook in self.on_dead_letter:
            _call(hook, outcome)


def _call(hook: Callable[[Outcome], None], outcome: Outcome) -> None:
    try:
        hook(outcome)
    except Exception:
        log.exception("serving hook %s failed; the outcome stands", getattr(hook, "__name__", hook))


@dataclass
class ServingStats:
    replies: dict[str, int] = field(default_factory=dict)
    dead_letters: int = 0
    engine_calls: int = 0


class Serving:
    """Serves requests of one tier with one engine (already wrapped: timeout and the rest)."""

    def __init__(
        self,
        tier: Tier,
        engine: Engine,
        policy: RoutingPolicy,
        *,
        prefix: str = "",
        hooks: Hooks | None = None,
        intents: IntentRefresh | None = None,
        fallback: FallbackStep | None = None,
        shedder: LoadShedder | None = None,
        pricing: Pricing | None = None,
    ) -> None:
        self.tier = tier
        self.pricing = pricing or Pricing.load()  # each reply's cost_usd (pricing.yaml)
        #: Where a request goes when this tier cannot answer in time (None: reply with the error).
        self.fallback = fallback
        self.shedder = shedder or LoadShedder(enabled=False)
        #: Gold: every model result in a reply also becomes the NPC's intent.
        self.intents = intents
        self.engine = engine
        self.policy = policy
        self.prefix = prefix
        self.hooks = hooks or Hooks()
        self.stats = ServingStats()
        self._default_reply_topic = REPLIES.name(prefix)
        self._outputs_topic = OUTPUTS.name(prefix)
        self._dlq_topic = DLQ.name(prefix)
        self._default_budget_ms = policy.tiers[tier].default_budget_ms

    async def handle(self, record: IncomingRecord) -> Outcome:
        """Accept and serve at once (no engine-slot bound): tests and single-record callers.

        Every accepted record is answered with a reply here; the worker loop gives refresh jobs to
        the refresh step instead (:mod:`workers.intents.refresh_step`).
        """
        accepted = self.accept(record)
        return accepted if isinstance(accepted, DeadLettered) else await self.serve(accepted)

    def accept(self, record: IncomingRecord) -> Job | DeadLettered:
        """Validate the record and read its deadline; a record that cannot be served is dead-lettered."""
        try:
            request = parse_request(record.value, self.prefix)
        except InvalidEvent as exc:
            return self.dead_letter(record, exc.reason, exc.errors)
        deadline_ms = read_deadline(record.headers)
        if deadline_ms is None:
            deadline_ms = request.created_at_ms + self._default_budget_ms
        refresh = is_refresh(record.headers)
        came = FallbackContext.read(record.headers)
        reply_topic = request.reply_topic or self._default_reply_topic
        return Job(request, deadline_ms, reply_topic, refresh, record.value or b"", came.chain, came.attempt)

    def shed(self, job: Job, expected_wait_ms: float, service_ms: float | None) -> Outcome | None:
        """Load shedding, before the job queues for a slot: degrade it now if the queue predicts a miss.

        Silver → the request goes to Bronze (:class:`Forwarded`); a Gold request with nowhere to
        go gets an ``expired`` reply saying why. Bronze is never shed. None: queue it. (A Gold
        refresh job is shed by its own step, :meth:`RefreshServing.shed
        <workers.intents.refresh_step.RefreshServing.shed>`.)
        """
        why = self.shedder.verdict(job.deadline_ms, time.time() * 1000, expected_wait_ms, service_ms)
        if why is None or self.tier is Tier.BRONZE:
            return None
        forwarded = self.fallback.forward(job, why, "shed", outcome="shed") if self.fallback else None
        if forwarded is not None:
            metrics.SHED.labels(self.tier.value, "forwarded").inc()
            return forwarded
        metrics.SHED.labels(self.tier.value, "skipped").inc()
        return self._replied(
            job, ReplyStatus.EXPIRED, time.time() * 1000, error=why, tried=attempt(self.tier, "shed", why)
        )

    def late_output(self, job: Job, result: EngineResult) -> Output:
        """A result that came after the request fell back: an output for the sinks, never a reply."""
        now = time.time() * 1000
        reply = build_reply(
            job,
            self.tier,
            ReplyStatus.OK,
            now,
            engine=self.engine.name,
            policy=self.policy,
            pricing=self.pricing,
            result=result,
            chain=(*job.chain, attempt(self.tier, "served", "late: after the fallback answered")),
        )
        return Output(request=job.request, reply=reply)

    async def serve(self, job: Job) -> Replied | Forwarded:
        """Answer an accepted request; call it once an engine slot is the caller's.

        The deadline is checked here, so time spent queueing for the slot counts against it.
        A refresh job is not served here but by the refresh step
        (:class:`~workers.intents.refresh_step.RefreshServing`): it never replies.
        """
        picked_ms = time.time() * 1000
        if picked_ms > job.deadline_ms:
            late_by = picked_ms - job.deadline_ms
            error = f"deadline passed {late_by:.0f} ms before a worker took it"
            return self._replied(job, ReplyStatus.EXPIRED, picked_ms, error=error)
        self.stats.engine_calls += 1
        call = CallContext(prior_chain=job.chain)
        try:
            result = await self.engine.generate(job.request, job.deadline_ms, call)
        except EngineError as exc:
            return self._cannot_answer(job, picked_ms, exc)
        if result.job_id is not None:
            return self._accepted(job, picked_ms, result.job_id)
        update = self.intents.update(job.request, result, self.engine.name) if self.intents else None
        return self._replied(job, ReplyStatus.OK, picked_ms, result=result, intent_update=update)

    def _cannot_answer(self, job: Job, picked_ms: float, exc: EngineError) -> Replied | Forwarded:
        """Fall back to the next tier if there is one; otherwise an error naming every tier tried."""
        late = exc.late if isinstance(exc, DeadlineReached) else None
        if self.fallback is not None:
            forwarded = self.fallback.forward(job, str(exc), reason_kind(exc), late=late)
            if forwarded is not None:
                return forwarded
        tried = attempt(self.tier, "failed", f"{reason_kind(exc)}: {exc}")
        return self._replied(job, ReplyStatus.ERROR, picked_ms, error=str(exc), tried=tried)

    def _accepted(self, job: Job, picked_ms: float, job_id: str) -> Replied:
        """An asynchronous engine took the request as a job: a notice now, the final reply later.

        The final reply comes from the job collector (:mod:`workers.jobs.collector`).
        """
        chain = (*job.chain, attempt(self.tier, "served", f"accepted as job {job_id}"))
        engine, policy = self.engine.name, self.policy
        reply = build_reply(
            job, self.tier, ReplyStatus.ACCEPTED, picked_ms, engine=engine, policy=policy, chain=chain
        ).model_copy(update={"job_id": job_id})
        outcome = Replied(reply, None, job.reply_topic, self._outputs_topic)
        self.stats.replies[reply.status.value] = self.stats.replies.get(reply.status.value, 0) + 1
        self.hooks.replied(outcome)
        return outcome

    def dead_letter(
        self, record: IncomingRecord, reason: str, errors: list[FieldError] | None = None
    ) -> DeadLettered:
        """The dead-letter outcome for ``record`` (also used by the loop for a bug in serving)."""
        letter = DeadLetter.of(
            record.value, reason, record.topic, record.partition, record.offset, errors, stage="worker"
        )
        outcome = DeadLettered(letter, self._dlq_topic)
        log.warning("%s worker dead-letters %s@%d: %s", self.tier.value, record.topic, record.offset, reason)
        self.stats.dead_letters += 1
        self.hooks.dead_lettered(outcome)
        return outcome

    def _replied(
        self,
        job: Job,
        status: ReplyStatus,
        picked_ms: float,
        *,
        result: EngineResult | None = None,
        error: str | None = None,
        intent_update: IntentUpdate | None = None,
        tried: TierAttempt | None = None,
    ) -> Replied:
        engine = self.engine.name
        if result is not None and result.substituted is not None:
            sub = result.substituted
            engine = sub.engine
            chain = (*job.chain, attempt(self.tier, "failed", sub.reason), attempt(Tier(sub.tier), "served"))
        elif result is not None:
            chain = (*job.chain, attempt(self.tier, "served"))
        else:
            chain = (*job.chain, tried or attempt(self.tier, "failed", error or status.value))
            if job.chain and error is not None:
                error = "every tier failed: " + "; ".join(f"{a.tier.value}: {a.reason}" for a in chain)
        if status is ReplyStatus.OK and len(chain) > 1:
            status = ReplyStatus.FALLBACK
        reply = build_reply(
            job,
            self.tier,
            status,
            picked_ms,
            engine=engine,
            policy=self.policy,
            pricing=self.pricing,
            result=result,
            error=error,
            chain=chain,
        )
        outcome = Replied(
            reply,
            Output(request=job.request, reply=reply),
            job.reply_topic,
            self._outputs_topic,
            intent_update,
            job.raw,
        )
        self.stats.replies[status.value] = self.stats.replies.get(status.value, 0) + 1
        self.hooks.replied(outcome)
        return outcome
