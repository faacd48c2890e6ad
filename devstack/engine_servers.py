"""The inference servers the dev stack starts when a tier's engine needs one that is not given.

- ``openai`` with no ``NPCFLOW_OPENAI_URL``: llama.cpp's OpenAI-compatible server on the
  embedded model (:class:`LlamaServerLauncher`);
- ``sagemaker`` with no ``NPCFLOW_SAGEMAKER_URL``: the local SageMaker-Async-compatible endpoint
  (:class:`SageMakerLocalLauncher`) on the stack's S3.

Each is started, probed on its own protocol and handed back with the ``NPCFLOW_*`` variables
that point the engines at it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from devstack.errors import StackError
from devstack.launchers import Launcher, free_ports, package_dir
from devstack.probes import port_open, wait_until
from devstack.supervise import ManagedProcess, stop_processes
from pipeline.config import TIERS, Settings, environ


class LlamaServerLauncher(Launcher):
    """llama.cpp's OpenAI-compatible server (``llama-cpp-python[server]``) on the embedded model.

    It speaks the protocol of ``vllm serve`` and ``trtllm-serve``, so the ``openai`` engine is
    exercised for real on a laptop. Started only when a tier's engine is ``openai`` with no URL.
    """

    name = "llama"
    threads: int = 1

    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def argv(self) -> list[str]:
        from workers.engines.embedded import bundled_model_path

        package_dir("fastapi", "llama-cpp-python[server]")
        return [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(bundled_model_path()),
            "--model_alias",
            "smollm2-135m",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_threads",
            str(self.threads),
            "--verbose",
            "False",
            # Its default answers a new request by cutting off the one being streamed: queue instead.
            "--interrupt_requests",
            "False",
        ]

    def ready(self, timeout: float) -> None:
        _http_ok(self.endpoint() + "/models", timeout)


class SageMakerLocalLauncher(Launcher):
    """The SageMaker-Async-compatible endpoint of :mod:`devstack.sagemaker_local` (S3 = moto)."""

    name = "sagemaker"
    s3_endpoint: str = ""
    threads: int = 1

    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "devstack.sagemaker_local",
            "--port",
            str(self.port),
            "--s3",
            self.s3_endpoint,
            "--threads",
            str(self.threads),
        ]

    def ready(self, timeout: float) -> None:
        _http_ok(self.endpoint() + "/ping", timeout)


def _http_ok(url: str, timeout: float) -> None:
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as response:
        if response.status != 200:
            raise StackError(f"{url} answered HTTP {response.status}")


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
            env["NPCFLOW_OPENAI_URL" if launcher.name == "llama" else "NPCFLOW_SAGEMAKER_URL"] = (
                launcher.endpoint()
            )
    except BaseException:
        stop_processes(procs)
        raise
    return procs, env
