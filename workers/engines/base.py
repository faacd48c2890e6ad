"""One protocol for every inference engine, so a tier worker never knows which one it drives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from pipeline.errors import UserFacingError
from topics.schemas import Request


class EngineError(RuntimeError):
    """The engine failed to produce a result for this request (bad response, crash, refusal)."""


class EngineUnavailable(EngineError, UserFacingError):
    """The engine cannot be reached or loaded; the worker reports it instead of hanging."""


@dataclass(frozen=True)
class EngineResult:
    text: str
    prompt_tokens: int
    completion_tokens: int


@runtime_checkable
class Engine(Protocol):
    """``generate`` gets the absolute deadline so an engine can size its own timeout from it."""

    name: str
    #: Calls the engine can usefully run at once; None when only the worker's limit applies.
    max_concurrency: int | None

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def generate(self, request: Request, deadline_ms: int) -> EngineResult: ...
