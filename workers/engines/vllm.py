"""vLLM in process (extra ``vllm``): the V1 engine's ``AsyncLLM``, for Silver on a GPU host.

Written against vLLM's documented async API (``examples/offline_inference/async_llm_streaming.py``):
``AsyncLLM.from_engine_args(AsyncEngineArgs(model=...))``, then
``async for out in engine.generate(request_id=..., prompt=..., sampling_params=...)`` until
``out.finished``; ``abort(request_id)`` frees the sequence of a call that was cancelled (a
timeout or a fallback at the deadline); ``shutdown()`` on stop. vLLM batches concurrent calls
itself, so the worker's in-flight limit is the only bound. Behind ``vllm serve`` instead, use
the ``openai`` engine.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pipeline.lifecycle import Lifecycle
from topics.schemas import Request
from workers.engines.base import PLAIN_CALL, CallContext, EngineError, EngineResult, EngineUnavailable
from workers.engines.gpu_common import import_extra, prompt_text, require_model, seed_of, to_result


class VLLMEngine(Lifecycle):
    """``vllm:<model>`` (or ``vllm`` with ``NPCFLOW_GPU_MODEL``); ``engine_args`` go to AsyncEngineArgs."""

    def __init__(self, model: str | None, persona: str = "silver", **engine_args: Any) -> None:
        self.model = require_model("vllm", model)
        self.persona = persona
        self.engine_args = engine_args
        self.name = f"vllm:{self.model}"
        self.max_concurrency: int | None = None
        self._engine: Any = None
        self._vllm: dict[str, Any] = {}

    async def _start(self) -> None:
        vllm = import_extra("vllm", "vllm")
        arg_utils = import_extra("vllm.engine.arg_utils", "vllm")
        async_llm = import_extra("vllm.v1.engine.async_llm", "vllm")
        self._vllm = {"SamplingParams": vllm.SamplingParams}
        args = arg_utils.AsyncEngineArgs(model=self.model, **self.engine_args)
        try:
            self._engine = async_llm.AsyncLLM.from_engine_args(args)
        except Exception as exc:  # no GPU, out of memory, bad model path
            raise EngineUnavailable(f"{self.name}: cannot start: {exc}") from exc

    async def _stop(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.shutdown()

    def sampling_params(self, request: Request) -> Any:
        return self._vllm["SamplingParams"](
            max_tokens=request.max_tokens, temperature=0.7, seed=seed_of(request)
        )

    async def generate(
        self, request: Request, deadline_ms: int, call: CallContext = PLAIN_CALL
    ) -> EngineResult:
        if self._engine is None:
            raise EngineUnavailable(f"{self.name} used before start()")
        final = None
        try:
            async for output in self._engine.generate(
                request_id=request.request_id,
                prompt=prompt_text(self.persona, request),
                sampling_params=self.sampling_params(request),
            ):
                final = output  # cumulative outputs: the last one holds the whole text
                if output.finished:
                    break
        except asyncio.CancelledError:
            await self._engine.abort(request.request_id)
            raise
        except Exception as exc:
            if type(exc).__name__ == "EngineDeadError":  # the engine process died: an outage
                raise EngineUnavailable(f"{self.name}: {exc}") from exc
            raise EngineError(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        if final is None or not final.finished:
            raise EngineError(f"{self.name}: the generation ended without a finished output")
        return to_result(final)
