"""Join requests, routing decisions and replies by request id, holding only what is in flight.

The three topics are read together (:mod:`replay.window` keeps them within seconds of each other
in record time), so a request's decision and reply arrive shortly after it, in any order. What
bounds the state: an entry leaves as soon as it has all three parts; one still open
``patience_ms`` (record time) behind the read position leaves incomplete (a dead-lettered
request never gets a decision or a reply); and at most ``max_open`` entries are held, the oldest
leaving first when more arrive. Memory is therefore ``max_open`` entries at most, whatever the
window's length (docs/architecture.md, "Replay for analysts").

Requests are parsed exactly as the router parses them (:func:`topics.schemas.parse_request` under
the recorded prefix): an invalid one is what the router dead-lettered. Decisions and replies were
validated by the router and workers that wrote them; unless the full rows are wanted (an export),
only the fields the report uses are read (:class:`DecisionView`, :class:`ReplyView`): half the
parsing cost, which is most of a replay's CPU.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from aiokafka.structs import ConsumerRecord
from pydantic import BaseModel, ConfigDict, ValidationError

from topics.catalogue import Tier
from topics.schemas import (
    InvalidEvent,
    Latency,
    Output,
    Reply,
    ReplyStatus,
    Request,
    RoutingDecision,
    parse_request,
)


class _View(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class DecisionView(_View):
    """The fields of a :class:`RoutingDecision` the report reads."""

    request_id: str
    tier: Tier
    fallback_from: Tier | None = None
    reason: str = ""
    stage: str = "router"


class ReplyView(_View):
    """The fields of a :class:`Reply` the report reads."""

    request_id: str
    tier: Tier
    status: ReplyStatus
    cost_usd: float = 0.0
    latency: Latency = Latency()


class _OutputView(_View):
    reply: ReplyView


@dataclass(slots=True)
class Entry:
    """One recorded request with what the pipeline did with it (each part None when not seen)."""

    request_id: str
    #: The request record as the game server sent it.
    raw: bytes | None = None
    received_ms: int = 0
    partition: int = -1
    offset: int = -1
    request: Request | None = None
    #: Why the recorded request is not a valid request (the router dead-lettered it).
    invalid: str | None = None
    decision: RoutingDecision | DecisionView | None = None
    #: Routing records written by workers (fallbacks), after the router's decision.
    worker_reroutes: int = 0
    reply: Reply | ReplyView | None = None
    #: Output records seen for this request (more than one: a duplicate or a late result).
    outputs: int = 0

    @property
    def complete(self) -> bool:
        return self.raw is not None and self.decision is not None and self.reply is not None

    @property
    def recorded_tier(self) -> Tier | None:
        """The tier the recorded policy chose (before any breaker detour); None: not routed."""
        if self.decision is not None:
            return self.decision.fallback_from or self.decision.tier
        return self.reply.tier if self.reply is not None else None

    @property
    def recorded_outcome(self) -> str:
        if self.decision is not None or self.reply is not None:
            return "routed"
        return "dead_lettered"


@dataclass
class JoinStats:
    requests: int = 0
    invalid: int = 0
    complete: int = 0
    #: Rows that left with a part missing: waited out (patience) or pushed out (max_open).
    timed_out: int = 0
    evicted: int = 0
    #: Decisions/replies whose request is not in the window (or came after its row left).
    orphans: int = 0
    unreadable: int = 0


class Join:
    """Feed records of the three topics; take finished rows from :meth:`ready`."""

    def __init__(
        self,
        requests_topic: str,
        routing_topic: str,
        outputs_topic: str,
        *,
        max_open: int,
        patience_ms: int,
        prefix: str = "",
        full: bool = True,
    ) -> None:
        """``prefix``: the recorded one (reply topics are checked under it, as the router did);
        ``full``: keep whole decisions and replies (an export) rather than the report's fields."""
        self.topics = (requests_topic, routing_topic, outputs_topic)
        self.prefix = prefix
        self._decision_model: type[RoutingDecision] | type[DecisionView] = (
            RoutingDecision if full else DecisionView
        )
        self._full = full
        self.max_open = max_open
        self.patience_ms = patience_ms
        self.stats = JoinStats()
        self._open: OrderedDict[str, Entry] = OrderedDict()
        self._first_seen: dict[str, int] = {}
        self._ready: list[Entry] = []
        self._invalid_seq = 0

    def add(self, topic: str, record: ConsumerRecord) -> None:
        self.add_many(topic, [record])

    def add_many(self, topic: str, records: list[ConsumerRecord]) -> None:
        """Records of one topic, in offset order."""
        requests, routing, outputs = self.topics
        handler = (
            self._add_request if topic == requests
            else self._add_decision if topic == routing
            else self._add_output if topic == outputs
            else None
        )
        if handler is not None:
            for record in records:
                handler(record)

    def _entry(self, request_id: str, ts: int) -> Entry:
        entry = self._open.get(request_id)
        if entry is None:
            entry = self._open[request_id] = Entry(request_id)
            self._first_seen[request_id] = ts
            if len(self._open) > self.max_open:
                self._leave(next(iter(self._open)), evicted=True)
        return entry

    def _add_request(self, record: ConsumerRecord) -> None:
        self.stats.requests += 1
        try:
            request = parse_request(record.value, self.prefix)
        except InvalidEvent as exc:
            # No request id to join on: the row leaves at once, as the router dead-lettered it.
            self.stats.invalid += 1
            self._invalid_seq += 1
            self._ready.append(
                Entry(
                    f"(invalid #{self._invalid_seq})",
                    raw=record.value,
                    received_ms=record.timestamp,
                    partition=record.partition,
                    offset=record.offset,
                    invalid=exc.reason,
                )
            )
            return
        entry = self._entry(request.request_id, record.timestamp)
        if entry.raw is not None:  # the same request sent again (an SDK resend): the first one counts
            return
        entry.raw, entry.request, entry.received_ms = record.value, request, record.timestamp
        entry.partition, entry.offset = record.partition, record.offset
        self._check(entry)

    def _add_decision(self, record: ConsumerRecord) -> None:
        try:
            decision = self._decision_model.model_validate_json(record.value or b"")
        except (InvalidEvent, ValidationError, ValueError):
            self.stats.unreadable += 1
            return
        entry = self._entry(decision.request_id, record.timestamp)
        if decision.stage == "worker":
            entry.worker_reroutes += 1
        elif entry.decision is None:
            entry.decision = decision
            self._check(entry)

    def _add_output(self, record: ConsumerRecord) -> None:
        try:
            raw = record.value or b""
            reply = Output.from_bytes(raw).reply if self._full else _OutputView.model_validate_json(raw).reply
        except (InvalidEvent, ValidationError, ValueError):
            self.stats.unreadable += 1
            return
        if reply.status is ReplyStatus.ACCEPTED:
            return
        entry = self._entry(reply.request_id, record.timestamp)
        entry.outputs += 1
        if entry.reply is None:
            entry.reply = reply
            self._check(entry)

    def _check(self, entry: Entry) -> None:
        if entry.complete:
            self.stats.complete += 1
            self._leave(entry.request_id)

    def _leave(self, request_id: str, *, evicted: bool = False, timed_out: bool = False) -> None:
        entry = self._open.pop(request_id)
        del self._first_seen[request_id]
        if entry.raw is None:
            self.stats.orphans += 1
            return
        self.stats.evicted += evicted
        self.stats.timed_out += timed_out
        self._ready.append(entry)

    def advance(self, position_ms: int | None) -> None:
        """The read reached ``position_ms`` on every topic: rows open since patience ago leave."""
        if position_ms is None:
            return
        horizon = position_ms - self.patience_ms
        while self._open:
            request_id = next(iter(self._open))
            if self._first_seen[request_id] >= horizon:
                break
            self._leave(request_id, timed_out=True)

    def ready(self) -> Iterator[Entry]:
        """Rows that left since the last call, in the order they left."""
        rows, self._ready = self._ready, []
        yield from rows

    def close(self) -> Iterator[Entry]:
        """The window is read: every open row leaves as it is."""
        for request_id in list(self._open):
            self._leave(request_id)
        return self.ready()

    @property
    def open(self) -> int:
        return len(self._open)
