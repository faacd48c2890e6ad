"""Start the router and the tier workers as separate processes, and know when they serve.

Used by ``npcflow demo``, the integration tests and the benchmarks, so all three run the
pipeline exactly as ops would: one OS process per router / worker, configured by environment.
Each child is a :class:`~devstack.supervise.ManagedProcess` (its own log file, killed with us if
we die) and is "ready" once its consumer group assigned it partitions (:mod:`pipeline.readiness`).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from devstack.errors import StackError
from devstack.supervise import LOG_DIR, ManagedProcess, stop_processes
from pipeline import config
from topics.catalogue import Tier


@dataclass
class PipelineProcesses:
    """``with PipelineProcesses(env, state_dir, engines={...}):`` runs a whole pipeline.

    ``env`` holds the ``NPCFLOW_*`` variables the children get on top of this process's
    environment (typically ``StackEndpoints.as_env()`` plus a topic prefix).
    """

    env: dict[str, str]
    state_dir: Path
    routers: int = 1
    workers: dict[Tier, int] = field(default_factory=lambda: {t: 1 for t in Tier})
    engines: dict[Tier, str] = field(default_factory=dict)
    #: Sinks on npc.outputs to run, one process each (``npcflow run sink --sink NAME``).
    sinks: tuple[str, ...] = ()
    ready_timeout_s: float = 60.0
    procs: list[tuple[ManagedProcess, Path]] = field(default_factory=list)

    def _spawn(self, name: str, args: list[str], extra_env: dict[str, str]) -> None:
        # --debug: a child that fails leaves its traceback in its log, where tests and the demo look.
        self.spawn(name, [sys.executable, "-m", "pipeline.cli", "--debug", *args], extra_env)

    def spawn(self, name: str, argv: list[str], extra_env: dict[str, str] | None = None) -> None:
        """Start one more process that signals readiness through ``NPCFLOW_READY_FILE``."""
        ready = self.state_dir / "ready" / f"{name}.json"
        ready.parent.mkdir(parents=True, exist_ok=True)
        ready.unlink(missing_ok=True)
        env = {**config.environ(), **self.env, **(extra_env or {}), "NPCFLOW_READY_FILE": str(ready)}
        proc = ManagedProcess(
            name=name,
            argv=argv,
            log_path=self.state_dir / LOG_DIR / f"{name}.log",
            env=env,
        )
        proc.start(die_with_parent=True)
        self.procs.append((proc, ready))

    def start(self) -> None:
        for i in range(self.routers):
            self._spawn(f"router-{i}", ["run", "router"], {})
        for tier, count in self.workers.items():
            extra = (
                {f"NPCFLOW_ENGINE_{tier.value.upper()}": self.engines[tier]} if tier in self.engines else {}
            )
            for i in range(count):
                self._spawn(f"worker-{tier.value}-{i}", ["run", "worker", "--tier", tier.value], extra)
        if any(spec.partition(":")[0] == "sagemaker" for spec in self.engines.values()):
            # Async jobs' final replies come from the collector (workers/jobs/collector.py).
            self._spawn("collector", ["run", "collector"], {})
        if "postgres" in self.sinks:
            self.migrate()
        for name in self.sinks:
            self._spawn(f"sink-{name}", ["run", "sink", "--sink", name], {})
        self.wait_ready()

    def migrate(self) -> None:
        """``npcflow db migrate`` with the children's environment, before the postgres sink starts."""
        argv = [sys.executable, "-m", "pipeline.cli", "db", "migrate"]
        done = subprocess.run(
            argv, env={**config.environ(), **self.env}, capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            self.stop()
            raise StackError(f"npcflow db migrate failed: {(done.stderr or done.stdout).strip()[-500:]}")

    def wait_ready(self) -> None:
        """Block until every process wrote its ready file; stop them all if one dies or is late."""
        deadline = time.monotonic() + self.ready_timeout_s
        waiting = list(self.procs)
        while waiting:
            for proc, ready in list(waiting):
                problem = proc.exit_problem()
                if problem:
                    self.stop()
                    raise StackError(f"{proc.name} {problem}")
                if ready.exists():
                    waiting.remove((proc, ready))
            if waiting and time.monotonic() > deadline:
                names = ", ".join(p.name for p, _ in waiting)
                self.stop()
                raise StackError(
                    f"not serving after {self.ready_timeout_s:.0f} s: {names} "
                    f"(logs in {self.state_dir / LOG_DIR})"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        stop_processes([p for p, _ in self.procs])
        self.procs.clear()

    def metrics_targets(self) -> dict[str, str]:
        """``{process name: "127.0.0.1:port"}`` of each ready process's /metrics (NPCFLOW_METRICS_PORT)."""
        targets = {}
        for proc, ready in self.procs:
            with contextlib.suppress(OSError, ValueError):
                port = json.loads(ready.read_text()).get("metrics_port")
                if port:
                    targets[proc.name] = f"127.0.0.1:{port}"
        return targets

    def __enter__(self) -> PipelineProcesses:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


#: How far a background process yields: nice 10 weighs about a tenth of nice 0 (sched(7)).
YIELD_NICE = 10


def yield_cpu(pid: int) -> None:
    """``pid`` at nice 10, its autogroup too: it runs when the router does not need the core.

    Every child starts its own session (:class:`~devstack.supervise.ManagedProcess`), and where the
    kernel groups by session (``/proc/sys/kernel/sched_autogroup_enabled``, on in most distributions
    and here) it first shares the CPU evenly between sessions: a thread's nice then only ranks it
    inside its own process, and a niced model weighed as much as the router. The autogroup's nice
    (``/proc/<pid>/autogroup``, sched(7)) is what ranks the process against the others; the
    threads' nice still counts where autogroups are off (docs/architecture.md, "Gold's two paths").
    """
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/autogroup").write_text(f"{YIELD_NICE}\n")
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            os.setpriority(os.PRIO_PROCESS, int(task.name), YIELD_NICE)


def background_yields(procs: PipelineProcesses, engines: dict[Tier, str]) -> None:
    """On a laptop the CPU models and the sinks share the cores with the router: they yield.

    Otherwise Gold's two-hop answers wait behind a second-long decode or a sink's batch for a core
    (docs/architecture.md, "Gold's two paths"); on GPU hosts and separate sink hosts the question
    does not arise.
    """
    for proc, _ in procs.procs:
        tier = next((t for t in Tier if proc.name.startswith(f"worker-{t.value}-")), None)
        if proc.name.startswith("sink-") or (tier is not None and engines.get(tier) == "embedded"):
            yield_cpu(proc.pid)
