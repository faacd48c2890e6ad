"""What the in-process GPU engines (vLLM, TensorRT-LLM) share: the prompt, the import, the result.

Both libraries take a plain prompt string in their async APIs, so the persona is its fixed
prefix (a prefix cache reuses it). Neither is installed by default: a missing extra is one
clear error naming the ``pip install`` to run.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from pipeline.config import ConfigError
from topics.schemas import Request
from workers.engines.base import EngineResult, EngineUnavailable
from workers.engines.embedded import PERSONAS


def require_model(kind: str, model: str | None) -> str:
    if not model:
        raise ConfigError(
            f"{kind} engine: no model; write {kind}:<model id or path> or set NPCFLOW_GPU_MODEL"
        )
    return model


def import_extra(module: str, extra: str) -> ModuleType:
    """Import ``module`` or say which extra installs it (GPU hosts only)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise EngineUnavailable(
            f"{module} is not installed ({exc}); on a CUDA host run `pip install 'npcflow[{extra}]'`"
        ) from exc


def prompt_text(persona: str, request: Request) -> str:
    return f"{PERSONAS.get(persona, persona)}\n\n{request.prompt}\n"


def seed_of(request: Request) -> int:
    """The same request id gives the same sampling seed: a replay says the same thing."""
    return int(request.request_id.encode().hex()[:7] or "0", 16)


def to_result(output: Any) -> EngineResult:
    """A final ``RequestOutput`` of either library: ``outputs[0].text`` and ``token_ids``."""
    first = output.outputs[0]
    return EngineResult(
        text=(first.text or "").strip(),
        prompt_tokens=len(getattr(output, "prompt_token_ids", None) or []),
        completion_tokens=len(getattr(first, "token_ids", None) or []),
    )
