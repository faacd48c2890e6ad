"""The production engines' settings as data (read from the environment in :mod:`pipeline.config`).

Apart from ``config.py`` only to keep that module short; nothing here reads ``os.environ``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OpenAISettings:
    """The ``openai`` engine (docs/architecture.md, "Production inference engines")."""

    #: Base URL up to ``/v1``; ``openai:<url>`` in a tier's engine spec overrides it.
    url: str | None = None
    #: The ``model`` field sent; None: the server's only (or first) model, asked once at start.
    model: str | None = None
    #: ``chat`` (chat completions) or ``completions``.
    api: str = "chat"
    api_key: str | None = None
    #: Longest silence between two streamed tokens (or before the first) before the call is a stall.
    stall_s: float = 10.0
    #: Keep-alive connections per worker process.
    max_connections: int = 32


@dataclass(frozen=True)
class SageMakerSettings:
    """The ``sagemaker`` engine and the job collector (Bronze as SageMaker Async jobs)."""

    #: sagemaker-runtime endpoint URL; None: AWS's own (the dev stack points it at its local endpoint).
    url: str | None = None
    #: The SageMaker endpoint name; ``sagemaker:<name>`` in the engine spec overrides it.
    endpoint: str = "npcflow-bronze"
    #: Where inputs, job records (and, for the dev stack, outputs) live.
    bucket: str = "npcflow-jobs"
    #: The collector's first look at a job's output; it backs off from there up to 16 times this.
    poll_s: float = 0.5
    #: A job with no output this long after its deadline is given up: an error reply, never silence.
    give_up_s: float = 120.0
