"""``ToolContext``: call a request's tools over MCP before generating, and give the engine their results.

An engine wrapper (docs/architecture.md, "Game state over MCP, tools and the result cache"):

1. The tenant's allowlist (``NPCFLOW_TOOL_ALLOWLIST``) filters the request's ``tools``; a tool
   not allowed, or not known, is recorded as ``refused`` and not called.
2. Each remaining tool becomes one or more MCP calls (:func:`plan_calls`), run **in parallel**,
   each with the same timeout: ``min(NPCFLOW_TOOL_TIMEOUT_MS, NPCFLOW_TOOL_BUDGET_FRACTION * time
   left to the deadline)``. So tools can take at most that fraction of what is left, and the
   engine always keeps the rest: a slow or dead tool never costs the request its deadline.
3. The answers are appended to the prompt under ``[game context]`` (compact JSON, each cut to
   ``max_result_chars``), so every engine uses them without knowing about tools; the persona
   prefix the engines cache stays first. A failed call adds nothing: the request degrades to
   less context, never to an error.
4. The result carries one :class:`~topics.schemas.ToolCall` per call (and per refusal): serving
   copies them into the reply's ``tools``.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, replace
from typing import Any

from pipeline.config.tools import KNOWN_TOOLS, ToolSettings
from pipeline.observability import metrics
from topics.schemas import Request, ToolCall
from workers.engines.base import PLAIN_CALL, CallContext, Engine, EngineResult, EngineWrapper
from workers.tools.client import McpToolClient, ToolFailed, ToolUnavailable

#: Lore hits asked for per ``rag_search`` (the server caps it too).
RAG_HITS = 3
CONTEXT_HEADER = "[game context]"


@dataclass(frozen=True)
class PlannedCall:
    """One MCP call made for one of the request's tools."""

    tool: str
    call: str
    arguments: dict[str, Any]


def plan_calls(request: Request, tools: tuple[str, ...]) -> list[PlannedCall]:
    """The MCP calls for ``tools``: ``game_state_query`` asks for the NPC, the world and, when the
    request's context names a ``player_id``, the player; ``rag_search`` searches with the prompt."""
    calls: list[PlannedCall] = []
    for tool in tools:
        if tool == "game_state_query":
            calls.append(PlannedCall(tool, "query_npc_state", {"npc_id": request.npc_id}))
            world = request.context.get("world_id")
            world_id = world if isinstance(world, str) else None
            calls.append(PlannedCall(tool, "get_world_snapshot", {"world_id": world_id}))
            player = request.context.get("player_id")
            if isinstance(player, str) and player:
                calls.append(PlannedCall(tool, "get_player_state", {"player_id": player}))
        elif tool == "rag_search":
            calls.append(PlannedCall(tool, "rag_search", {"query": request.prompt, "k": RAG_HITS}))
    return calls


def compact(text: str, limit: int) -> str:
    """JSON re-dumped without whitespace (the server pretty-prints), cut to ``limit`` characters."""
    try:
        text = json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False)
    except ValueError:
        pass
    return text if len(text) <= limit else text[: limit - 12] + "…(truncated)"


def with_context(request: Request, answers: list[tuple[PlannedCall, str]], limit: int) -> Request:
    """``request`` with the tools' answers appended to its prompt (unchanged when none answered)."""
    if not answers:
        return request
    lines = [f"{call.call}: {compact(text, limit)}" for call, text in answers]
    return request.model_copy(update={"prompt": f"{request.prompt}\n\n{CONTEXT_HEADER}\n" + "\n".join(lines)})


class ToolContext(EngineWrapper):
    """Calls the request's tools on the game-state MCP server, then the inner engine with the context."""

    def __init__(self, inner: Engine, client: McpToolClient, settings: ToolSettings) -> None:
        super().__init__(inner)
        self.client = client
        self.settings = settings

    async def _start(self) -> None:
        await self.client.start()
        await super()._start()

    async def _stop(self) -> None:
        await super()._stop()
        await self.client.stop()

    async def generate(
        self, request: Request, deadline_ms: int, call: CallContext = PLAIN_CALL
    ) -> EngineResult:
        if not request.tools:
            return await self.inner.generate(request, deadline_ms, call)
        allowed = self.settings.allowed(request.tenant_id, request.tools)
        records = [
            ToolCall(tool=t, call=t, outcome="refused", error=_refusal(t, allowed))
            for t in request.tools
            if t not in allowed or t not in KNOWN_TOOLS
        ]
        calls = plan_calls(request, tuple(t for t in allowed if t in KNOWN_TOOLS))
        left_ms = deadline_ms - time.time() * 1000
        timeout_s = min(self.settings.timeout_ms, self.settings.budget_fraction * left_ms) / 1000
        done = await asyncio.gather(*(self._call(c, timeout_s) for c in calls))
        records.extend(record for record, _ in done)
        answers = [(call, text) for call, (_, text) in zip(calls, done, strict=True) if text is not None]
        enriched = with_context(request, answers, self.settings.max_result_chars)
        result = await self.inner.generate(enriched, deadline_ms, call)
        return replace(result, tool_calls=(*result.tool_calls, *records))

    async def _call(self, call: PlannedCall, timeout_s: float) -> tuple[ToolCall, str | None]:
        began = time.perf_counter()
        text: str | None = None
        error = ""
        if timeout_s <= 0.001:
            outcome, error = "timeout", "no time left before the deadline"
        else:
            try:
                text = await self.client.call(call.call, call.arguments, timeout_s)
                outcome = "ok"
            except TimeoutError:
                outcome, error = "timeout", f"no answer within {timeout_s * 1000:.0f} ms"
            except ToolUnavailable as exc:
                outcome, error = "unavailable", str(exc)
            except ToolFailed as exc:
                outcome, error = "error", str(exc)
            except Exception as exc:  # a tool must never fail the request
                outcome, error = "error", f"{type(exc).__name__}: {exc}"
        ms = (time.perf_counter() - began) * 1000
        metrics.TOOL_CALLS.labels(call.call, outcome).inc()
        if outcome != "unavailable":
            metrics.TOOL_LATENCY_SECONDS.labels(call.call).observe(ms / 1000)
        record = ToolCall(tool=call.tool, call=call.call, outcome=outcome, ms=round(ms, 3), error=error[:300])
        return record, text


def _refusal(tool: str, allowed: tuple[str, ...]) -> str:
    if tool not in KNOWN_TOOLS:
        return f"unknown tool (this worker calls {', '.join(KNOWN_TOOLS)})"
    return "not in this tenant's tool allowlist"
