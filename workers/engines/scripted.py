"""A deterministic engine for tests and benchmarks of routing, fallback and breakers.

Never the product's default: it produces canned text. Its behaviour is a profile string so a
test or a benchmark can configure a worker process from the environment, e.g.
``scripted:latency_ms=0`` or ``scripted:latency_ms=40,fail_every=5,stall_ms=2000``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from pipeline.lifecycle import Lifecycle
from topics.schemas import Request
from workers.engines.base import PLAIN_CALL, CallContext, EngineError, EngineResult, EngineUnavailable


@dataclass(frozen=True)
class ScriptedProfile:
    latency_ms: float = 0.0
    #: Every Nth call fails with EngineError (0: never).
    fail_every: int = 0
    #: Every Nth call stalls for ``stall_ms`` before answering (0: never), to test timeouts.
    stall_every: int = 0
    stall_ms: float = 0.0
    tokens_per_reply: int = 0
    #: An outage by the wall clock (epoch ms; 0: none), the same in every process given the profile:
    #: from ``outage_at_ms`` the engine refuses every call for ``refuse_ms`` (EngineUnavailable at
    #: once), then hangs every call for ``hang_ms`` (no result, no error), then recovers.
    outage_at_ms: float = 0.0
    refuse_ms: float = 0.0
    hang_ms: float = 0.0
    #: 1: the reply's text ends with the prompt the engine got (tests see the tools' context in it).
    echo: int = 0

    def phase(self, now_ms: float) -> str:
        """``ok``, ``refusing`` or ``hanging`` at ``now_ms`` (epoch)."""
        if not self.outage_at_ms or now_ms < self.outage_at_ms:
            return "ok"
        if now_ms < self.outage_at_ms + self.refuse_ms:
            return "refusing"
        if now_ms < self.outage_at_ms + self.refuse_ms + self.hang_ms:
            return "hanging"
        return "ok"

    @classmethod
    def parse(cls, spec: str) -> ScriptedProfile:
        """Parse ``key=value,key=value``; unknown keys are an error that names them."""
        values: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            key, sep, raw = part.partition("=")
            if not sep or key not in cls.__dataclass_fields__:
                known = ", ".join(cls.__dataclass_fields__)
                raise ValueError(f"scripted engine: bad profile entry {part!r} (known keys: {known})")
            field_type = cls.__dataclass_fields__[key].type
            values[key] = int(raw) if field_type == "int" else float(raw)
        return cls(**values)


class ScriptedEngine(Lifecycle):
    def __init__(self, profile: ScriptedProfile | None = None) -> None:
        self.profile = profile or ScriptedProfile()
        self.name = f"scripted(latency_ms={self.profile.latency_ms:g})"
        self.calls = 0
        self.max_concurrency: int | None = None

    async def _start(self) -> None:
        return None

    async def _stop(self) -> None:
        return None

    async def generate(
        self, request: Request, deadline_ms: int, call: CallContext = PLAIN_CALL
    ) -> EngineResult:
        self.calls += 1
        n = self.calls
        p = self.profile
        phase = p.phase(time.time() * 1000)
        if phase == "refusing":
            raise EngineUnavailable(f"scripted outage: refusing call {n}")
        if phase == "hanging":
            await asyncio.sleep(3600)  # a stalled engine: only a timeout ends this call
        delay = p.latency_ms
        if p.stall_every and n % p.stall_every == 0:
            delay += p.stall_ms
        if delay > 0:
            await asyncio.sleep(delay / 1000.0)
        if p.fail_every and n % p.fail_every == 0:
            raise EngineError(f"scripted failure on call {n} (fail_every={p.fail_every})")
        completion = p.tokens_per_reply or min(request.max_tokens, 8)
        echoed = f": {request.prompt}" if p.echo else ""
        return EngineResult(
            text=f"[{request.npc_id}] scripted reply #{n}{echoed}",
            prompt_tokens=len(request.prompt.split()),
            completion_tokens=completion,
        )
