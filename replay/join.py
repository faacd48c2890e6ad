"""Join requests, routing decisions and replies by request id, holding only what is in flight.

The three topics are read together (:mod:`replay.window` keeps them within seconds of each other
in record time), so a request's decision and reply arrive shortly after it, in any order. What
bounds the state: an entry leaves as soon as it has all three parts; one still open
``patience_ms`` (record time) behind the read position leaves incomplete (a dead-lettered
request never gets a decision or a reply); and at most ``max_open`` entries are held, the oldest
leaving first when more arrive. Memory is therefore ``max_open`` entries at most, whatever the
window's length (docs/architecture.md, "Replay for analysts").

Requests are parsed exactly as the router parses them (:func:`topics.rejections.parse_request` under
the recorded prefix): an invalid one is what the router dead-lettered. Decisions and replies were
validated by the router and workers that wrote them; unless the full rows are wanted (an export),
only the fields the report uses are read (:class:`DecisionView`, :class:`ReplyView`, msgspec
structs: a quarter of pydantic's cost; parsing is most of a replay's CPU).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import msgspec
from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError

from topics.catalogue import Tier
from topics.fields import ReplyStatus
from topics.rejections import parse_request
from topics.schemas import InvalidEvent, Output, Reply, Request, RoutingDecision


class _Latency(msgspec.Struct, frozen=True):
    total_ms: float = 0.0


class DecisionView(msgspec.Struct, frozen=True):
    """The fields of a :class:`RoutingDecision` the report reads."""

    request_id: str
    tier: Tier
    fallback_from: Tier | None = None
    reason: str = ""
    stage: str = "router"


class ReplyView(msgspec.Struct, frozen=True):
    """The fields of a :class:`Reply` the report reads."""

    request_id: str
    tier: Tier
    status: ReplyStatus
    cost_usd: float = 0.0
    latency: _Latency = _Latency()


class _OutputView(msgspec.Struct, frozen=True):
    reply: ReplyView


# Unknown fields are skipped while decoding, without building them (pydantic builds the whole JSON
# tree first: an output's 700 bytes cost 3.3 µs there, 0.8 µs here).
_read_decision = msgspec.json.Decoder(DecisionView).decode
_read_output = msgspec.json.Decoder(_OutputView).decode
#: What a record that is not such an object raises (pydantic's, for the full models).
_UNREADABLE = (InvalidEvent, ValidationError, ValueError, msgspec.MsgspecError)


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
    #: Record time of the first part seen: the row waits ``patience_ms`` from here at most.
    first_seen: int = 0

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
        self._full = full
        self.max_open = max_open
        self.patience_ms = patience_ms
        self.stats = JoinStats()
        #: Open rows, oldest first (an OrderedDict: the oldest is found in O(1) however many left).
        self._open: OrderedDict[str, Entry] = OrderedDict()
        self._ready: list[Entry] = []
        self._invalid_seq = 0

    def add(self, topic: str, record: ConsumerRecord) -> None:
        self.add_many(topic, [record])

    def add_many(self, topic: str, records: list[ConsumerRecord]) -> None:
        """Records of one topic, in offset order.

        The loops below are a replay's per-record cost after the parsing itself, so they work on
        locals and inline the bookkeeping (benchmarks/replay.py; docs/architecture.md §14).
        """
        requests, routing, outputs = self.topics
        if topic == requests:
            self._add_requests(records)
        elif topic == routing:
            self._add_decisions(records)
        elif topic == outputs:
            self._add_outputs(records)

    def _new(self, request_id: str, ts: int) -> Entry:
        entry = self._open[request_id] = Entry(request_id, first_seen=ts)
        if len(self._open) > self.max_open:
            self._leave(next(iter(self._open)), evicted=True)
        return entry

    def _done(self, entry: Entry) -> None:
        """The row has its three parts: it leaves now."""
        self.stats.complete += 1
        del self._open[entry.request_id]
        self._ready.append(entry)

    def _add_requests(self, records: list[ConsumerRecord]) -> None:
        stats, prefix, get = self.stats, self.prefix, self._open.get
        for record in records:
            stats.requests += 1
            try:
                request = parse_request(record.value, prefix)
            except InvalidEvent as exc:
                # No request id to join on: the row leaves at once, as the router dead-lettered it.
                stats.invalid += 1
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
                continue
            entry = get(request.request_id)
            if entry is None:
                entry = self._new(request.request_id, record.timestamp)
            elif entry.raw is not None:  # the same request sent again (an SDK resend): the first counts
                continue
            entry.raw, entry.request, entry.received_ms = record.value, request, record.timestamp
            entry.partition, entry.offset = record.partition, record.offset
            if entry.decision is not None and entry.reply is not None:
                self._done(entry)

    def _add_decisions(self, records: list[ConsumerRecord]) -> None:
        validate = RoutingDecision.model_validate_json if self._full else _read_decision
        get = self._open.get
        for record in records:
            try:
                decision = validate(record.value or b"")
            except _UNREADABLE:
                self.stats.unreadable += 1
                continue
            entry = get(decision.request_id)
            if entry is None:
                entry = self._new(decision.request_id, record.timestamp)
            if decision.stage == "worker":
                entry.worker_reroutes += 1
            elif entry.decision is None:
                entry.decision = decision
                if entry.raw is not None and entry.reply is not None:
                    self._done(entry)

    def _add_outputs(self, records: list[ConsumerRecord]) -> None:
        full, get, accepted = self._full, self._open.get, ReplyStatus.ACCEPTED
        validate = Output.from_bytes if full else _read_output
        for record in records:
            try:
                reply = validate(record.value or b"").reply
            except _UNREADABLE:
                self.stats.unreadable += 1
                continue
            if reply.status is accepted:
                continue
            entry = get(reply.request_id)
            if entry is None:
                entry = self._new(reply.request_id, record.timestamp)
            entry.outputs += 1
            if entry.reply is None:
                entry.reply = reply
                if entry.raw is not None and entry.decision is not None:
                    self._done(entry)

    def _leave(self, request_id: str, *, evicted: bool = False, timed_out: bool = False) -> None:
        entry = self._open.pop(request_id)
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
            entry = next(iter(self._open.values()))
            if entry.first_seen >= horizon:
                break
            self._leave(entry.request_id, timed_out=True)

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
