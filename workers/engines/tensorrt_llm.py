"""TensorRT-LLM in process (extra ``tensorrt-llm``): the LLM API's ``generate_async``, for Gold.

Written against TensorRT-LLM's documented LLM API (``examples/llm-api/llm_inference_async.py``):
``LLM(model=...)`` (an HF id or a local checkpoint; building the engine blocks, so it runs in a
thread), then ``await llm.generate_async(prompt, sampling_params=SamplingParams(max_tokens=...))``
→ a ``RequestOutput`` with ``outputs[0].text`` / ``token_ids``; ``shutdown()`` on stop. A
cancelled call (timeout) is aborted so its slot is freed. Behind ``trtllm-serve`` instead, use
the ``openai`` engine.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pipeline.lifecycle import Lifecycle
from topics.schemas import Request
from workers.engines.base import PLAIN_CALL, CallContext, EngineError, EngineResult, EngineUnavailable
from workers.engines.gpu_common import import_extra, prompt_text, require_model, seed_of, to_result


class TensorRTLLMEngine(Lifecycle):
    """``tensorrt-llm:<model>`` (or with ``NPCFLOW_GPU_MODEL``); ``llm_args`` go to ``LLM(...)``."""

    def __init__(self, model: str | None, persona: str = "gold", **llm_args: Any) -> None:
        self.model = require_model("tensorrt-llm", model)
        self.persona = persona
        self.llm_args = llm_args
        self.name = f"tensorrt-llm:{self.model}"
        self.max_concurrency: int | None = None
        self._llm: Any = None
        self._sampling: Any = None

    async def _start(self) -> None:
        trt = import_extra("tensorrt_llm", "tensorrt-llm")
        self._sampling = trt.SamplingParams
        try:
            self._llm = await asyncio.to_thread(trt.LLM, model=self.model, **self.llm_args)
        except Exception as exc:
            raise EngineUnavailable(f"{self.name}: cannot start: {exc}") from exc

    async def _stop(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            await asyncio.to_thread(llm.shutdown)

    def sampling_params(self, request: Request) -> Any:
        return self._sampling(max_tokens=request.max_tokens, temperature=0.7, seed=seed_of(request))

    async def generate(
        self, request: Request, deadline_ms: int, call: CallContext = PLAIN_CALL
    ) -> EngineResult:
        if self._llm is None:
            raise EngineUnavailable(f"{self.name} used before start()")
        pending = self._llm.generate_async(
            prompt_text(self.persona, request), sampling_params=self.sampling_params(request)
        )
        try:
            output = await pending
        except asyncio.CancelledError:
            abort = getattr(pending, "abort", None)
            if callable(abort):
                abort()
            raise
        except Exception as exc:
            raise EngineError(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        return to_result(output)
