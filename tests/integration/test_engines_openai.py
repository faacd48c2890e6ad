"""The ``openai`` engine against a real OpenAI-compatible server: llama.cpp's, on the embedded model.

The server is started the way the dev stack starts it when a tier's engine is ``openai``
(:mod:`devstack.engine_servers`). Faults are real: a port nobody listens on, a path the server
does not serve, and a server frozen with SIGSTOP mid-call (a stall: no token, no error).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.engine_servers import start_engine_servers
from devstack.launchers import free_ports
from devstack.supervise import ManagedProcess, stop_processes
from pipeline.config import EngineSettings, OpenAISettings, Settings
from topics.headers import now_ms
from topics.schemas import Request
from workers.engines import build_engine
from workers.engines.base import EngineError, EngineUnavailable
from workers.engines.openai_http import OpenAIHTTPEngine
from workers.resilience.exceptions import EngineTimeout, reason_kind


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ManagedProcess]]:
    state = tmp_path_factory.mktemp("llama")
    settings = Settings(engines=EngineSettings(silver="openai"))
    procs, env = start_engine_servers(settings, Path(state), "")
    try:
        yield env["NPCFLOW_OPENAI_URL"], procs[0]
    finally:
        stop_processes(procs)


def _request(i: int = 0, max_tokens: int = 8, prompt: str = "A wolf appears at the gate.") -> Request:
    return Request(
        request_id=f"oa-{i}-{time.time_ns()}",
        npc_id=f"npc-{i}",
        tenant_id="gs-test",
        prompt=prompt,
        max_tokens=max_tokens,
        created_at_ms=now_ms(),
    )


@pytest.mark.parametrize("api", ["chat", "completions"])
async def test_streams_text_and_counts_tokens(llama: tuple[str, ManagedProcess], api: str) -> None:
    url, _ = llama
    async with OpenAIHTTPEngine(OpenAISettings(url=url, api=api), persona="silver") as engine:
        assert engine.model == "smollm2-135m", "the model is asked of the server when none is configured"
        result = await engine.generate(_request(max_tokens=12), now_ms() + 30_000)
    assert result.text
    assert 1 <= result.completion_tokens <= 12


async def test_concurrent_calls_share_the_keep_alive_pool(llama: tuple[str, ManagedProcess]) -> None:
    url, _ = llama
    async with OpenAIHTTPEngine(OpenAISettings(url=url, max_connections=2)) as engine:
        results = await asyncio.gather(*(engine.generate(_request(i), now_ms() + 60_000) for i in range(4)))
    assert all(r.text and r.completion_tokens > 0 for r in results), results


async def test_built_from_a_spec_with_the_url() -> None:
    engine = build_engine("openai:http://127.0.0.1:9/v1", "gold", Settings())
    assert isinstance(engine, OpenAIHTTPEngine) and engine.base_url == "http://127.0.0.1:9/v1"


async def test_nobody_listening_is_unavailable() -> None:
    (port,) = free_ports(1)
    settings = OpenAISettings(url=f"http://127.0.0.1:{port}/v1", model="any")
    async with OpenAIHTTPEngine(settings) as engine:
        with pytest.raises(EngineUnavailable) as info:
            await engine.generate(_request(), now_ms() + 5_000)
    assert reason_kind(info.value) == "unavailable"


async def test_a_path_the_server_lacks_is_an_engine_error_not_an_outage(
    llama: tuple[str, ManagedProcess],
) -> None:
    url, _ = llama
    async with OpenAIHTTPEngine(OpenAISettings(url=url + "/nope", model="smollm2-135m")) as engine:
        with pytest.raises(EngineError) as info:
            await engine.generate(_request(), now_ms() + 5_000)
    assert not isinstance(info.value, EngineUnavailable) and "HTTP 404" in str(info.value)


async def test_a_frozen_server_is_a_stall_caught_long_before_the_deadline(
    llama: tuple[str, ManagedProcess],
) -> None:
    url, proc = llama
    async with OpenAIHTTPEngine(OpenAISettings(url=url, stall_s=1.0)) as engine:
        os.kill(proc.pid, signal.SIGSTOP)
        began = time.monotonic()
        try:
            with pytest.raises(EngineTimeout) as info:
                await engine.generate(_request(max_tokens=64), now_ms() + 60_000)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        assert time.monotonic() - began < 5.0, "the stall must end the call, not the 60 s deadline"
        assert "stalled" in str(info.value) and reason_kind(info.value) == "timeout"
        # The server recovers and the same pool serves again.
        result = await engine.generate(_request(), now_ms() + 30_000)
    assert result.text
