"""The inference servers the dev stack starts when a tier's engine needs one that is not given.

- ``openai`` with no ``NPCFLOW_OPENAI_URL``: llama.cpp's OpenAI-compatible server on the
  embedded model (:class:`~devstack.launchers.LlamaServerLauncher`);
- ``sagemaker`` with no ``NPCFLOW_SAGEMAKER_URL``: the local SageMaker-Async-compatible endpoint
  (:class:`~devstack.launchers.SageMakerLocalLauncher`) on the stack's S3.

Each is started, probed on its own protocol and handed back with the ``NPCFLOW_*`` variables
that point the engines at it.
"""

from __future__ import annotations

import time
from pathlib import Path

from devstack.errors import StackError
from devstack.launchers import Launcher, LlamaServerLauncher, SageMakerLocalLauncher, free_ports
from devstack.probes import port_open, wait_until
from devstack.supervise import ManagedProcess, stop_processes
from pipeline.config import ENV_OPENAI_URL, ENV_SAGEMAKER_URL, TIERS, Settings, environ


def needed(settings: Settings) -> list[str]:
    """Which engine servers the settings call for and do not give: ``llama``, ``sagemaker``."""
    kinds = {settings.engines.spec_for(t) for t in TIERS}
    out = []
    if "openai" in kinds and not settings.engines.openai.url:
        out.append("llama")
    if "sagemaker" in kinds and not settings.engines.sagemaker.url:
        out.append("sagemaker")
    return out


def start_engine_servers(
    settings: Settings,
    state_dir: Path,
    s3_endpoint: str,
    *,
    names: list[str] | None = None,
    die_with_parent: bool = True,
    timeout_s: float = 60.0,
) -> tuple[list[ManagedProcess], dict[str, str]]:
    """Start the servers ``names`` (default: :func:`needed`); returns them and their variables."""
    names = needed(settings) if names is None else names
    if not names:
        return [], {}
    launchers: list[Launcher] = []
    for name, port in zip(names, free_ports(len(names)), strict=True):
        if name == "llama":
            launchers.append(LlamaServerLauncher(state_dir=state_dir, port=port))
        elif name == "sagemaker":
            launcher = SageMakerLocalLauncher(state_dir=state_dir, port=port)
            launcher.s3_endpoint = s3_endpoint
            launchers.append(launcher)
        else:
            raise StackError(f"unknown engine server {name!r}")
    procs: list[ManagedProcess] = []
    env: dict[str, str] = {}
    try:
        for launcher in launchers:
            proc = launcher.process()
            proc.env = {**environ(), "HF_HUB_OFFLINE": "1"}  # nothing may download weights
            proc.start(die_with_parent=die_with_parent)
            procs.append(proc)
        deadline = time.monotonic() + timeout_s
        for launcher, proc in zip(launchers, procs, strict=True):
            alive = proc.exit_problem
            wait_until(launcher.name, lambda lz=launcher: port_open(lz.port), deadline, alive=alive)
            wait_until(launcher.name, lambda lz=launcher: lz.ready(5.0), deadline, alive=alive)
            env[ENV_OPENAI_URL if launcher.name == "llama" else ENV_SAGEMAKER_URL] = launcher.endpoint()
    except BaseException:
        stop_processes(procs)
        raise
    return procs, env
