"""One protocol for every inference engine, so a tier worker never knows which one it drives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from pipeline.lifecycle import Lifecycle
from topics.errors import UserFacingError
from topics.schemas import Request, TierAttempt, ToolCall


@dataclass(frozen=True)
class CallContext:
    """What serving knows about one engine call beyond the request and its deadline.

    Serving builds it; every wrapper passes it on unchanged to the engine inside (and to a
    substitute). Most engines ignore it; the fields say who reads them. It is an argument, not
    request state kept aside, so a call's facts are visible in the one engine protocol and a
    test can pass them (docs/architecture.md, "Engines").
    """

    #: A Gold intent refresh: the result cache must not answer it (a refresh exists to get a new
    #: intent; :mod:`workers.cache.result_step`).
    refresh: bool = False
    #: The tiers this request went through before this one (fallbacks): an asynchronous engine
    #: (SageMaker jobs) keeps them so the job's final reply still names the whole chain.
    prior_chain: tuple[TierAttempt, ...] = ()


#: An ordinary call: not a refresh, a first attempt (direct callers: tests, benchmarks, tools).
PLAIN_CALL = CallContext()


class EngineError(RuntimeError):
    """The engine failed to produce a result for this request (bad response, crash, refusal)."""


class EngineUnavailable(EngineError, UserFacingError):
    """The engine cannot be reached or loaded; the worker reports it instead of hanging."""


@dataclass(frozen=True)
class Substitution:
    """Set on a result by a wrapper that answered with another tier's engine (Gold → Silver)."""

    tier: str
    engine: str
    from_tier: str
    reason: str


@dataclass(frozen=True)
class CachedAnswer:
    """Set on a result the result cache answered (no engine call): the earlier reply it reuses."""

    request_id: str
    tier: str
    engine: str
    #: The engine time the earlier answer took: what this hit saved.
    engine_ms: float


@dataclass(frozen=True)
class EngineResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    substituted: Substitution | None = None
    #: Set by an asynchronous engine (SageMaker Async): the job was accepted, the text comes later
    #: from the job collector; serving answers with an ``accepted`` notice carrying this id.
    job_id: str | None = None
    #: The MCP tool calls made for the request's tools before generating (workers/tools/).
    tool_calls: tuple[ToolCall, ...] = ()
    #: Set when the result cache answered instead of the engine (workers/cache/result_step.py).
    cached: CachedAnswer | None = None


@runtime_checkable
class Engine(Protocol):
    """``generate`` gets the absolute deadline so an engine can size its own timeout from it, and
    the call's :class:`CallContext` (``PLAIN_CALL`` when the caller has nothing to say)."""

    name: str
    #: Calls the engine can usefully run at once; None when only the worker's limit applies.
    max_concurrency: int | None

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def generate(
        self, request: Request, deadline_ms: int, call: CallContext = PLAIN_CALL
    ) -> EngineResult: ...


class EngineWrapper(Lifecycle):
    """An engine around another engine: the seam for timeouts, fallback, breakers and caches.

    A wrapper is itself an :class:`Engine`, so wrappers compose (``Timeout(Breaker(engine))``)
    and the worker never knows how many there are. Starting or stopping a wrapper starts or
    stops the engine inside it; ``name`` and ``max_concurrency`` are the inner engine's, so
    replies keep naming the engine that really answered. Subclasses implement ``generate`` and
    pass ``call`` on to every engine they call.
    """

    def __init__(self, inner: Engine) -> None:
        self.inner = inner

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def max_concurrency(self) -> int | None:
        return self.inner.max_concurrency

    async def _start(self) -> None:
        await self.inner.start()

    async def _stop(self) -> None:
        await self.inner.stop()

    async def generate(
        self, request: Request, deadline_ms: int, call: CallContext = PLAIN_CALL
    ) -> EngineResult:
        raise NotImplementedError
