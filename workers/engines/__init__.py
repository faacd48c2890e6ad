"""Inference engines behind one protocol, chosen per tier by configuration.

``NPCFLOW_ENGINE_<TIER>`` (or ``NPCFLOW_ENGINE`` for all tiers) names the engine:
``embedded`` (the default), or ``scripted:<profile>`` for tests and benchmarks.
"""

from __future__ import annotations

from pipeline.config import ConfigError, EngineSettings
from workers.engines.base import Engine, EngineError, EngineResult, EngineUnavailable

__all__ = ["Engine", "EngineError", "EngineResult", "EngineUnavailable", "build_engine"]


def build_engine(spec: str, tier: str, settings: EngineSettings | None = None) -> Engine:
    """Build an engine from its spec string; an unknown kind is an error naming the known ones."""
    settings = settings or EngineSettings()
    kind, _, arg = spec.partition(":")
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
    raise ConfigError(f"unknown engine {spec!r} for tier {tier}: use 'embedded' or 'scripted:<profile>'")
