"""Inference engines behind one protocol, chosen per tier by configuration.

``NPCFLOW_ENGINE_<TIER>`` (or ``NPCFLOW_ENGINE`` for all tiers) names the engine:
``embedded`` (the default), ``openai[:<url>]`` (an OpenAI-compatible server),
``sagemaker[:<endpoint>]`` (SageMaker Async jobs), ``vllm[:<model>]`` and
``tensorrt-llm[:<model>]`` (in process, GPU extras), or ``scripted:<profile>`` for tests and
benchmarks. The production engines live in their own modules, imported only when named.
"""

from __future__ import annotations

from pipeline.config import ConfigError, EngineSettings, Settings
from workers.engines.base import Engine, EngineError, EngineResult, EngineUnavailable

__all__ = ["Engine", "EngineError", "EngineResult", "EngineUnavailable", "build_engine"]


def build_engine(spec: str, tier: str, settings: EngineSettings | Settings | None = None) -> Engine:
    """Build an engine from its spec string; an unknown kind is an error naming the known ones.

    The SageMaker engine needs the process's whole :class:`Settings` (S3, topic prefix); the
    others only its engine settings.
    """
    full = settings if isinstance(settings, Settings) else Settings(engines=settings or EngineSettings())
    settings = full.engines
    kind, _, arg = spec.partition(":")
    production = _production_engine(kind, arg, tier, full)
    if production is not None:
        return production
    if kind == "embedded":
        from pathlib import Path

        from workers.engines.embedded import EmbeddedEngine

        model = Path(settings.embedded_model_path) if settings.embedded_model_path else None
        return EmbeddedEngine(persona=tier, model_path=model, threads=settings.embedded_threads)
    if kind == "scripted":
        from workers.engines.scripted import ScriptedEngine, ScriptedProfile

        try:
            return ScriptedEngine(ScriptedProfile.parse(arg))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    raise ConfigError(
        f"unknown engine {spec!r} for tier {tier}: use embedded, openai[:<url>], sagemaker[:<endpoint>], "
        "vllm[:<model>], tensorrt-llm[:<model>] or scripted:<profile>"
    )


def _production_engine(kind: str, arg: str, tier: str, settings: Settings) -> Engine | None:
    """The engines of GPU hosts and managed endpoints, each imported only when named."""
    if kind == "openai":
        from workers.engines.openai_http import OpenAIHTTPEngine

        return OpenAIHTTPEngine(settings.engines.openai, persona=tier, url=arg or None)
    if kind == "sagemaker":
        from workers.engines.sagemaker_async import SageMakerAsyncEngine

        return SageMakerAsyncEngine(settings, endpoint=arg or None)
    if kind == "vllm":
        from workers.engines.vllm import VLLMEngine

        return VLLMEngine(arg or settings.engines.gpu_model, persona=tier)
    if kind in ("tensorrt-llm", "trtllm"):
        from workers.engines.tensorrt_llm import TensorRTLLMEngine

        return TensorRTLLMEngine(arg or settings.engines.gpu_model, persona=tier)
    return None
