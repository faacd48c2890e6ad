"""The production engines' argument and result mapping, without GPUs or servers.

vLLM and TensorRT-LLM cannot run here: their modules are replaced by small stand-ins that
record what the engine asked for and answer with objects of the documented shape
(``RequestOutput.outputs[0].text`` / ``token_ids``). The servers these engines talk to in
production are tested for real in tests/integration/test_engines_openai.py and test_bronze_jobs.py.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import types
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from pipeline.config import ConfigError, OpenAISettings, Settings
from topics.catalogue import Tier
from topics.fields import ReplyStatus, ServedBy, Sla
from topics.headers import now_ms
from topics.policy import RoutingPolicy
from topics.schemas import Request
from workers.engines import build_engine
from workers.engines.base import PLAIN_CALL, CallContext, EngineError, EngineResult, EngineUnavailable
from workers.engines.openai_http import OpenAIHTTPEngine, _Stream
from workers.engines.sagemaker_async import invocation_limits, job_input
from workers.jobs.collector import parse_output
from workers.serving import Replied, Serving


def _request(**changes: Any) -> Request:
    fields = {
        "request_id": f"r-{time.time_ns()}",
        "npc_id": "npc-1",
        "tenant_id": "gs-unit",
        "prompt": "A wolf appears.",
        "max_tokens": 8,
        "created_at_ms": now_ms(),
    } | changes
    return Request(**fields)


# --- vLLM and TensorRT-LLM, their modules stood in for -------------------------------------------


@dataclass
class _Completion:
    text: str
    token_ids: list[int]


@dataclass
class _Output:
    outputs: list[_Completion]
    prompt_token_ids: list[int]
    finished: bool


@dataclass
class _Recorder:
    calls: list[tuple[str, Any]] = field(default_factory=list)


def _sampling_params(recorder: _Recorder) -> type:
    class SamplingParams:
        def __init__(self, **kwargs: Any) -> None:
            self.kwargs = kwargs
            recorder.calls.append(("SamplingParams", kwargs))

    return SamplingParams


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Recorder]:
    rec = _Recorder()

    class AsyncEngineArgs:
        def __init__(self, **kwargs: Any) -> None:
            rec.calls.append(("AsyncEngineArgs", kwargs))

    class AsyncLLM:
        hang = False

        @classmethod
        def from_engine_args(cls, args: Any) -> AsyncLLM:
            return cls()

        async def generate(
            self, *, request_id: str, prompt: str, sampling_params: Any
        ) -> AsyncIterator[_Output]:
            rec.calls.append(("generate", {"request_id": request_id, "prompt": prompt}))
            yield _Output([_Completion("The", [1])], [7, 8, 9], False)
            if AsyncLLM.hang:
                await asyncio.sleep(3600)
            yield _Output([_Completion("The gate holds.", [1, 2, 3, 4])], [7, 8, 9], True)

        async def abort(self, request_id: str) -> None:
            rec.calls.append(("abort", request_id))

        def shutdown(self) -> None:
            rec.calls.append(("shutdown", None))

    vllm = types.ModuleType("vllm")
    vllm.SamplingParams = _sampling_params(rec)  # type: ignore[attr-defined]
    arg_utils = types.ModuleType("vllm.engine.arg_utils")
    arg_utils.AsyncEngineArgs = AsyncEngineArgs  # type: ignore[attr-defined]
    async_llm = types.ModuleType("vllm.v1.engine.async_llm")
    async_llm.AsyncLLM = AsyncLLM  # type: ignore[attr-defined]
    for name, module in {
        "vllm": vllm,
        "vllm.engine.arg_utils": arg_utils,
        "vllm.v1.engine.async_llm": async_llm,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    rec.calls.append(("engine_class", AsyncLLM))
    yield rec


async def test_vllm_maps_the_request_and_the_final_output(fake_vllm: _Recorder) -> None:
    engine = build_engine("vllm:Qwen/Qwen2.5-0.5B-Instruct", "silver", Settings())
    req = _request(max_tokens=12)
    async with engine:
        result = await engine.generate(req, now_ms() + 1000)
    calls = dict(fake_vllm.calls[1:])
    assert calls["AsyncEngineArgs"] == {"model": "Qwen/Qwen2.5-0.5B-Instruct"}
    assert calls["SamplingParams"]["max_tokens"] == 12 and "seed" in calls["SamplingParams"]
    assert calls["generate"]["request_id"] == req.request_id
    assert calls["generate"]["prompt"].rstrip().endswith(req.prompt)
    assert result == EngineResult(text="The gate holds.", prompt_tokens=3, completion_tokens=4)
    assert ("shutdown", None) in fake_vllm.calls and engine.name == "vllm:Qwen/Qwen2.5-0.5B-Instruct"


async def test_vllm_aborts_a_cancelled_call(fake_vllm: _Recorder) -> None:
    fake_vllm.calls[0][1].hang = True
    async with build_engine("vllm:m", "silver", Settings()) as engine:
        req = _request()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(engine.generate(req, now_ms() + 1000), 0.2)
    assert ("abort", req.request_id) in fake_vllm.calls


@pytest.fixture
def fake_trtllm(monkeypatch: pytest.MonkeyPatch) -> _Recorder:
    rec = _Recorder()

    class LLM:
        def __init__(self, **kwargs: Any) -> None:
            rec.calls.append(("LLM", kwargs))

        async def _answer(self) -> _Output:
            return _Output([_Completion(" Draw steel. ", [5, 6])], [1, 2, 3, 4, 5], True)

        def generate_async(self, prompt: str, sampling_params: Any) -> Any:
            rec.calls.append(("generate_async", {"prompt": prompt, "params": sampling_params.kwargs}))
            return self._answer()

        def shutdown(self) -> None:
            rec.calls.append(("shutdown", None))

    trt = types.ModuleType("tensorrt_llm")
    trt.LLM = LLM  # type: ignore[attr-defined]
    trt.SamplingParams = _sampling_params(rec)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt_llm", trt)
    return rec


async def test_tensorrt_llm_maps_the_request_and_the_output(fake_trtllm: _Recorder) -> None:
    engine = build_engine("tensorrt-llm:/models/llama-1b", "gold", Settings())
    async with engine:
        result = await engine.generate(_request(max_tokens=8), now_ms() + 1000)
    calls = dict(fake_trtllm.calls)
    assert calls["LLM"] == {"model": "/models/llama-1b"}
    assert calls["generate_async"]["params"]["max_tokens"] == 8
    assert "one short action" in calls["generate_async"]["prompt"]  # Gold's persona
    assert result == EngineResult(text="Draw steel.", prompt_tokens=5, completion_tokens=2)
    assert ("shutdown", None) in fake_trtllm.calls


async def test_a_missing_gpu_extra_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)  # import fails as if not installed
    engine = build_engine("tensorrt-llm:m", "gold", Settings())
    with pytest.raises(EngineUnavailable, match=r"pip install 'npcflow\[tensorrt-llm\]'"):
        await engine.start()


def test_a_gpu_engine_without_a_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="NPCFLOW_GPU_MODEL"):
        build_engine("vllm", "silver", Settings())


def test_an_unknown_engine_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="sagemaker"):
        build_engine("tgi", "silver", Settings())


# --- the OpenAI-compatible engine's mapping --------------------------------------------------------


def test_openai_chunks_of_both_apis_add_up() -> None:
    out = _Stream()
    OpenAIHTTPEngine.add_chunk(out, {"choices": [{"delta": {"role": "assistant"}}]})
    OpenAIHTTPEngine.add_chunk(out, {"choices": [{"delta": {"content": "Hold"}}]})
    OpenAIHTTPEngine.add_chunk(out, {"choices": [{"text": " the gate", "finish_reason": "length"}]})
    OpenAIHTTPEngine.add_chunk(out, {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}})
    engine = OpenAIHTTPEngine(OpenAISettings(url="http://x/v1"))
    assert out.finished and engine.result(out) == EngineResult("Hold the gate", 9, 3)


def test_openai_http_errors_map_to_what_fallback_acts_on() -> None:
    engine = OpenAIHTTPEngine(OpenAISettings(url="http://x/v1"))
    assert isinstance(engine.http_error(503, "overloaded"), EngineUnavailable)
    assert isinstance(engine.http_error(429, "slow down"), EngineUnavailable)
    bad = engine.http_error(400, "max_tokens too large")
    assert isinstance(bad, EngineError) and not isinstance(bad, EngineUnavailable)


def test_openai_call_timeout_follows_the_deadline() -> None:
    engine = OpenAIHTTPEngine(OpenAISettings(url="http://x/v1"))
    assert engine.call_timeout_s(10_000, now_ms=7_500) == 2.5
    assert engine.call_timeout_s(10_000, now_ms=12_000) == 1.0  # past it: a short last chance
    path, body = engine.body(_request(max_tokens=5))
    assert path == "/chat/completions" and body["stream"] and body["max_tokens"] == 5


def test_openai_without_a_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="NPCFLOW_OPENAI_URL"):
        build_engine("openai", "silver", Settings())


# --- SageMaker Async: limits from the budget, input and output shapes, the notice ------------------


def test_sagemaker_limits_come_from_the_budget_within_sagemakers_ranges() -> None:
    assert invocation_limits(100_000, now_ms=10_000) == (90, 90)
    assert invocation_limits(10_500, now_ms=10_000) == (60, 1)  # TTL is at least 60 s
    assert invocation_limits(10**10, now_ms=0) == (21_600, 3_600)
    body = job_input(_request(max_tokens=96))
    assert body["parameters"]["max_new_tokens"] == 96 and body["inputs"] == "A wolf appears."


@pytest.mark.parametrize(
    "raw, text, tokens",
    [
        (json.dumps({"generated_text": " Once ", "details": {"generated_tokens": 4}}), "Once", 4),
        (json.dumps([{"generated_text": "a b c"}]), "a b c", 3),
        ("plain words here", "plain words here", 3),
    ],
)
def test_job_outputs_of_the_llm_containers_parse(raw: str, text: str, tokens: int) -> None:
    result = parse_output(raw.encode())
    assert result.text == text and result.completion_tokens == tokens


class _JobEngine:
    name = "sagemaker-async:test"
    max_concurrency = None

    async def generate(
        self, request: Request, deadline_ms: int, call: CallContext = PLAIN_CALL
    ) -> EngineResult:
        return EngineResult(text="", prompt_tokens=0, completion_tokens=0, job_id=request.request_id)


async def test_an_accepted_job_is_a_notice_with_its_id_and_no_output_event() -> None:
    from tests.unit.test_serving import routed

    req = _request(sla=Sla.ASYNC)
    serving = Serving(Tier.BRONZE, _JobEngine(), RoutingPolicy.load(), prefix="p.")  # type: ignore[arg-type]
    outcome = await serving.handle(routed(req))
    assert isinstance(outcome, Replied) and outcome.output is None
    reply = outcome.reply
    assert reply.status is ReplyStatus.ACCEPTED and reply.job_id == req.request_id
    assert reply.served_by is ServedBy.NONE and reply.text == "" and not reply.late
