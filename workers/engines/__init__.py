"""Inference engines behind one protocol, chosen per tier by configuration.

``NPCFLOW_ENGINE_<TIER>`` (or ``NPCFLOW_ENGINE`` for all tiers) names the engine:
``embedded`` (the default), or ``scripted:<profile>`` for tests and benchmarks.
"""

from __future__ import annotations

import os

from pipeline.config import ConfigError
from workers.engines.base import Engine, EngineError, EngineResult, EngineUnavailable

ENV_ENGINE = "NPCFLOW_ENGINE"

__all__ = ["Engine", "EngineError", "EngineResult", "EngineUnavailable", "build_engine", "engine_spec"]


def engine_spec(tier: str) -> str:
    """The configured engine for a tier: ``NPCFLOW_ENGINE_GOLD`` etc., then ``NPCFLOW_ENGINE``."""
    return (
        os.environ.get(f"{ENV_ENGINE}_{tier.upper()}") or os.environ.get(ENV_ENGINE) or "embedded"
    ).strip()


def build_engine(spec: str, tier: str) -> Engine:
    """Build an engine from its spec string; an unknown kind is an error naming the known ones."""
    kind, _, arg = spec.partition(":")
    if kind == "embedded":
        from workers.engines.embedded import EmbeddedEngine

        return EmbeddedEngine(persona=tier)
    if kind == "scripted":
        from workers.engines.scripted import ScriptedEngine, ScriptedProfile

        try:
            return ScriptedEngine(ScriptedProfile.parse(arg))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    raise ConfigError(f"unknown engine {spec!r} for tier {tier}: use 'embedded' or 'scripted:<profile>'")
