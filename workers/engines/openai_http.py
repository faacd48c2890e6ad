"""An engine for any OpenAI-compatible server: ``vllm serve``, ``trtllm-serve``, llama.cpp's server.

This is how vLLM and TensorRT-LLM are deployed in practice, so it is the production engine of
Gold and Silver. One keep-alive connection pool per worker process (httpx), chat completions or
plain completions, always streamed: a server that stops sending tokens is caught after
``stall_s`` of silence, long before the request's deadline-sized timeout would end the call.

Errors are mapped to what the resilience wrappers act on (:mod:`workers.resilience`):

- cannot connect, connection dropped, HTTP 429 / 5xx → :class:`EngineUnavailable` (the engine is
  down or overloaded: breakers count it, fallback moves the request on);
- no token for ``stall_s``, or the whole call past its deadline-sized timeout → :class:`EngineTimeout`;
- any other HTTP error (a 4xx: the request or the configuration is wrong), or a body that is not
  the OpenAI shape → :class:`EngineError`.

Token usage comes from the server's ``usage`` (vLLM and trtllm-serve send it on the last chunk
when asked with ``stream_options.include_usage``); a server that does not (llama.cpp's) has its
completion tokens counted from the streamed chunks, one token each, and its prompt tokens left 0.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from pipeline.config import OpenAISettings
from pipeline.lifecycle import Lifecycle
from topics.schemas import Request
from workers.engines.base import PLAIN_CALL, CallContext, EngineError, EngineResult, EngineUnavailable
from workers.engines.embedded import PERSONAS
from workers.resilience.exceptions import EngineTimeout

#: The longest any call may take, whatever its deadline says (the worker's own cap is larger).
MAX_CALL_S = 600.0
#: A call gets at least this long, so a request picked at its deadline still gets its answer (late).
MIN_CALL_S = 1.0


def _httpx() -> Any:
    try:
        import httpx
    except ImportError as exc:  # the base install has it
        raise EngineUnavailable(f"openai engine needs httpx ({exc}): `pip install httpx`") from exc
    return httpx


@dataclass
class _Stream:
    """What a streamed answer added up to."""

    text: str = ""
    chunks: int = 0
    usage: dict[str, Any] | None = None
    #: A ``finish_reason`` or ``[DONE]`` came: the answer is whole, not cut off.
    finished: bool = False


class OpenAIHTTPEngine(Lifecycle):
    """``openai`` or ``openai:<base url>`` in a tier's engine spec."""

    def __init__(self, settings: OpenAISettings, persona: str = "silver", url: str | None = None) -> None:
        base = (url or settings.url or "").rstrip("/")
        if not base:
            from pipeline.config import ConfigError

            raise ConfigError(
                "openai engine: no server URL; set NPCFLOW_OPENAI_URL=http://host:port/v1 "
                "or write the engine as openai:http://host:port/v1"
            )
        self.base_url = base
        self.settings = settings
        self.persona = PERSONAS.get(persona, persona)
        self.model = settings.model
        self.name = f"openai:{base}"
        #: The server batches concurrent requests itself: only the worker's own limit applies.
        self.max_concurrency: int | None = None
        self._client: Any = None

    async def _start(self) -> None:
        httpx = _httpx()
        limits = httpx.Limits(
            max_connections=self.settings.max_connections,
            max_keepalive_connections=self.settings.max_connections,
        )
        headers = {"Authorization": f"Bearer {self.settings.api_key}"} if self.settings.api_key else {}
        self._client = httpx.AsyncClient(base_url=self.base_url, limits=limits, headers=headers)
        if self.model is None:
            self.model = await self._first_model()
        self.name = f"openai:{self.model}@{self.base_url}"

    async def _stop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def _first_model(self) -> str:
        """The server's model when none is configured (vllm serve and llama.cpp serve one each)."""
        httpx = _httpx()
        try:
            response = await self._client.get("/models", timeout=10.0)
            response.raise_for_status()
            models = response.json().get("data") or []
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            raise EngineUnavailable(f"openai engine: cannot list models at {self.base_url}: {exc}") from exc
        if not models:
            raise EngineUnavailable(f"openai engine: {self.base_url} serves no model")
        return str(models[0]["id"])

    def body(self, request: Request) -> tuple[str, dict[str, Any]]:
        """The path and JSON body of one call (chat or completions, always streamed)."""
        common: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_tokens,
            "temperature": 0.7,
            "stream": True,
            "stream_options": {"include_usage": True},
            # vLLM and llama.cpp take a seed: the same request id gives the same text on a replay.
            "seed": int(request.request_id.encode().hex()[:7] or "0", 16),
            "user": request.tenant_id,
        }
        if self.settings.api == "completions":
            return "/completions", {**common, "prompt": f"{self.persona}\n\n{request.prompt}\n"}
        messages = [
            {"role": "system", "content": self.persona},
            {"role": "user", "content": request.prompt},
        ]
        return "/chat/completions", {**common, "messages": messages}

    def call_timeout_s(self, deadline_ms: int, now_ms: float | None = None) -> float:
        """Until the deadline, at least MIN_CALL_S, at most MAX_CALL_S."""
        now = time.time() * 1000 if now_ms is None else now_ms
        return min(MAX_CALL_S, max(MIN_CALL_S, (deadline_ms - now) / 1000.0))

    async def generate(
        self, request: Request, deadline_ms: int, call: CallContext = PLAIN_CALL
    ) -> EngineResult:
        if self._client is None:
            raise EngineUnavailable("openai engine used before start()")
        httpx = _httpx()
        path, body = self.body(request)
        total_s = self.call_timeout_s(deadline_ms)
        stall_s = min(self.settings.stall_s, total_s)
        # httpx's read timeout is the longest wait for the next bytes: exactly the stall detector.
        timeout = httpx.Timeout(total_s, connect=min(5.0, total_s), read=stall_s)
        began = time.monotonic()
        try:
            async with self._client.stream("POST", path, json=body, timeout=timeout) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise self.http_error(response.status_code, response.text)
                stream = await self._read(response.aiter_lines(), began, total_s)
        except httpx.ReadTimeout:
            raise EngineTimeout(f"{self.name} (stalled: no token for {stall_s:.1f} s)", stall_s) from None
        except httpx.TimeoutException as exc:
            if isinstance(exc, httpx.ConnectTimeout):
                raise EngineUnavailable(f"{self.name}: connect timed out") from None
            raise EngineTimeout(self.name, total_s) from None
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            raise EngineUnavailable(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        except httpx.HTTPError as exc:
            raise EngineError(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        return self.result(stream)

    def http_error(self, status: int, text: str) -> EngineError:
        detail = " ".join(text.split())[:300]
        message = f"{self.name}: HTTP {status}: {detail}"
        if status == 429 or status >= 500:
            return EngineUnavailable(message)
        return EngineError(message)

    async def _read(self, lines: AsyncIterator[str], began: float, total_s: float) -> _Stream:
        """Add up the server-sent events; the whole stream is bounded by ``total_s``."""
        out = _Stream()
        async for line in lines:
            if time.monotonic() - began > total_s:
                raise EngineTimeout(self.name, total_s)
            if not line.startswith("data:"):
                continue  # blank separators, ": keep-alive" comments
            data = line[5:].strip()
            if data == "[DONE]":
                out.finished = True
                break
            try:
                chunk = json.loads(data)
            except ValueError:
                raise EngineError(f"{self.name}: a streamed chunk is not JSON: {data[:200]!r}") from None
            if not isinstance(chunk, dict):
                raise EngineError(f"{self.name}: a streamed chunk is not an object: {data[:200]!r}")
            if "error" in chunk:  # vLLM reports errors inside the stream once it has begun
                raise EngineError(f"{self.name}: server error mid-stream: {str(chunk['error'])[:300]}")
            self.add_chunk(out, chunk)
        if not out.finished:
            # llama.cpp's server, for one, ends a stream it interrupted without saying so.
            raise EngineError(f"{self.name}: the stream ended before the answer did")
        return out

    @staticmethod
    def add_chunk(out: _Stream, chunk: dict[str, Any]) -> None:
        """One chunk of either API: chat (``delta.content``) or completions (``text``)."""
        if chunk.get("usage"):
            out.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            out.finished = out.finished or bool(choice.get("finish_reason"))
            piece = (choice.get("delta") or {}).get("content") if "delta" in choice else choice.get("text")
            if piece:
                out.text += piece
                out.chunks += 1

    def result(self, stream: _Stream) -> EngineResult:
        usage = stream.usage or {}
        return EngineResult(
            text=stream.text.strip(),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or stream.chunks),
        )
