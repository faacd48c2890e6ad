"""The embedded stack: Kafka protocol, PostgreSQL, Redis, S3 and the OpenSearch API on loopback.

A service already given through its ``NPCFLOW_*`` variable is used as it is and only probed;
everything else is started here (:mod:`devstack.launchers`) on a free 127.0.0.1 port, probed on
its own protocol (:mod:`devstack.probes`), and written to ``<state_dir>/stack.env`` so every
other process finds it through :class:`pipeline.config.Settings`.

All children are started from the thread that calls :meth:`EmbeddedStack.start`. In the
foreground mode they carry ``PR_SET_PDEATHSIG``, which the kernel fires when *that thread*
exits, so call ``start()`` from a thread that lives as long as the stack (the main thread).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

from devstack.endpoints import SERVICE_ENV, SERVICES, STACK_ENV_FILE, StackEndpoints, given_endpoints
from devstack.errors import StackError
from devstack.kafka_launcher import KafkaLauncher, release_storage
from devstack.launchers import (
    Launcher,
    OpenSearchLauncher,
    PostgresLauncher,
    RedisLauncher,
    S3Launcher,
    free_ports,
)
from devstack.probes import PROBES, describe, port_open, wait_until
from devstack.supervise import (
    PID_FILE,
    ManagedProcess,
    atomic_write,
    read_pidfile,
    running_from_pidfile,
    stop_processes,
)
from pipeline.config import Settings

log = logging.getLogger("npcflow.stack")


#: moto (a Python process, ~1 s to import) first and PostgreSQL (initdb blocks the spawning
#: thread) last, so the slow parts overlap instead of adding up.
SPAWN_ORDER: tuple[str, ...] = ("s3", "kafka", "redis", "opensearch", "postgres")

LAUNCHERS: dict[str, type[Launcher]] = {
    cls.name: cls for cls in (KafkaLauncher, PostgresLauncher, RedisLauncher, S3Launcher, OpenSearchLauncher)
}


def ports_needed(name: str, settings: Settings) -> int:
    """Loopback ports service ``name`` listens on: a Kafka node needs a broker and a controller port."""
    return 2 * settings.embedded_kafka_nodes if name == "kafka" else 1


def launcher_for(name: str, settings: Settings, state_dir: Path, ports: Iterator[int]) -> Launcher:
    """The launcher of service ``name``, taking :func:`ports_needed` ports from ``ports``."""
    taken = [next(ports) for _ in range(ports_needed(name, settings))]
    if name == "kafka":
        return KafkaLauncher(
            state_dir=state_dir,
            port=taken[0],
            nodes=settings.embedded_kafka_nodes,
            extra_ports=taken[1:],
            storage=settings.embedded_kafka_storage,
        )
    return LAUNCHERS[name](state_dir=state_dir, port=taken[0])


class EmbeddedStack:
    """Starts what the environment does not provide, probes everything and writes ``stack.env``.

    ``detach=False`` (tests, foreground ``stack up``): children die with this process, even on
    SIGKILL. ``detach=True`` (``stack up --detach``): they outlive it and ``stop_from_pidfile``
    (``stack down``) stops them by the pids recorded in ``stack.pids``.
    """

    def __init__(
        self,
        state_dir: Path | None = None,
        *,
        settings: Settings | None = None,
        detach: bool = False,
        startup_timeout: float = 60.0,
        external_timeout: float = 10.0,
        stop_timeout: float = 10.0,
    ) -> None:
        # Only the environment gives services: stack.env is this stack's own output, and a stale
        # one (left by a killed stack) must not pass for a running service.
        self.settings = settings or Settings.from_env(stack_file=False)
        self.state_dir: Path = (state_dir or self.settings.state_dir).resolve()
        self.detach = detach
        self.startup_timeout = startup_timeout
        self.external_timeout = external_timeout
        self.stop_timeout = stop_timeout
        self.endpoints: StackEndpoints | None = None
        #: "ok" or the error, per service, from the last start().
        self.results: dict[str, str] = {}
        #: Seconds from the start of start() until each service started here answered its probe.
        self.ready_s: dict[str, float] = {}
        self.processes: list[ManagedProcess] = []
        #: ``NPCFLOW_OPENAI_URL`` / ``NPCFLOW_SAGEMAKER_URL`` of the engine servers started here.
        self.engine_env: dict[str, str] = {}
        self._lock = threading.Lock()
        #: Whether this stack made the brokers' storage, so its stop gives it back.
        self._made_storage = False

    @property
    def started(self) -> list[str]:
        """Names of the services this stack started itself (the rest came from the environment)."""
        names = {proc.name.partition("-")[0] for proc in self.processes}
        return [name for name in SERVICES if name in names]

    def start(self) -> StackEndpoints:
        """Bring everything up and return the endpoints; raises StackError with per-service results."""
        if self.processes:
            raise StackError("this stack is already started")
        running = running_from_pidfile(self.state_dir)
        if running:
            raise StackError(
                f"an embedded stack from {self.state_dir} is still running ({', '.join(running)}); "
                "stop it with `npcflow stack down` first"
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / PID_FILE).unlink(missing_ok=True)
        began = time.monotonic()
        if not self.detach:
            atexit.register(self.stop)
        try:
            return self._start(began)
        except BaseException:
            self.stop()
            raise

    def _start(self, began: float) -> StackEndpoints:
        urls: dict[str, str] = {}
        errors: dict[str, str] = {}
        launchers: dict[str, Launcher] = {}
        service_procs: dict[str, list[ManagedProcess]] = {}
        given = given_endpoints(self.settings)
        # Every port at once, so no two services (nor a broker's controller listener) get the same one.
        ports = iter(
            free_ports(sum(ports_needed(name, self.settings) for name in SERVICES if not given[name]))
        )
        for name in SPAWN_ORDER:
            if given[name]:
                urls[name] = given[name]
                log.info("%s: using %s from %s", name, given[name], SERVICE_ENV[name])
                continue
            try:
                launcher = launcher_for(name, self.settings, self.state_dir, ports)
                self._made_storage |= isinstance(launcher, KafkaLauncher)
                launcher.prepare()
                for proc in launcher.processes():
                    # Spawned here, on the caller's thread: PDEATHSIG is tied to the spawning thread.
                    proc.start(die_with_parent=not self.detach)
                    with self._lock:
                        self.processes.append(proc)
                    service_procs.setdefault(name, []).append(proc)
            except Exception as exc:
                text = str(exc) if isinstance(exc, StackError) else describe(exc)
                errors[name] = text if text.startswith(f"{name}:") else f"{name}: {text}"
                continue
            launchers[name] = launcher
            urls[name] = launcher.endpoint()
        self._write_pidfile()

        deadline_started = time.monotonic() + self.startup_timeout
        deadline_given = time.monotonic() + self.external_timeout
        cancel = threading.Event()

        def exit_problem(name: str) -> Callable[[], str | None]:
            return lambda: next(filter(None, (p.exit_problem() for p in service_procs[name])), None)

        def wait(name: str) -> str:
            if name in errors:
                return errors[name]
            try:
                if name in launchers:
                    launcher, alive = launchers[name], exit_problem(name)
                    wait_until(
                        name, lambda: port_open(launcher.port), deadline_started, alive=alive, cancel=cancel
                    )
                    wait_until(
                        name, lambda: launcher.ready(5.0), deadline_started, alive=alive, cancel=cancel
                    )
                else:
                    wait_until(name, lambda: PROBES[name](urls[name], 5.0), deadline_given, cancel=cancel)
            except StackError as exc:
                return str(exc)
            if name in launchers:
                self.ready_s[name] = round(time.monotonic() - began, 2)
            return "ok"

        pool = ThreadPoolExecutor(max_workers=len(SERVICES), thread_name_prefix="npcflow-wait")
        try:
            self.results = dict(zip(SERVICES, pool.map(wait, SERVICES), strict=True))
        except BaseException:
            cancel.set()  # Ctrl-C while waiting: let the probe threads give up now
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        failed = [result for result in self.results.values() if result != "ok"]
        if failed:
            raise StackError("embedded stack failed: " + "; ".join(failed), self.results)

        self.endpoints = StackEndpoints.from_mapping({SERVICE_ENV[n]: urls[n] for n in SERVICES})
        self._start_engine_servers(urls["s3"])
        self._write_env(self.endpoints)
        log.info(
            "embedded stack ready in %.1f s (started: %s; given: %s)",
            time.monotonic() - began,
            ", ".join(self.started) or "none",
            ", ".join(n for n in SERVICES if given[n]) or "none",
        )
        return self.endpoints

    def _start_engine_servers(self, s3_endpoint: str) -> None:
        """llama.cpp's server / the local SageMaker endpoint, when a tier's engine needs one."""
        from devstack.engine_servers import start_engine_servers

        procs, self.engine_env = start_engine_servers(
            self.settings, self.state_dir, s3_endpoint, die_with_parent=not self.detach
        )
        with self._lock:
            self.processes.extend(procs)
        if procs:
            self._write_pidfile()

    def _write_pidfile(self) -> None:
        records = []
        for proc in self.processes:
            try:
                records.append(proc.record())
            except psutil.Error:
                continue  # already gone; the readiness wait reports why
        data = {
            "owner_pid": os.getpid(),
            "detached": self.detach,
            "state_dir": str(self.state_dir),
            "processes": records,
        }
        atomic_write(self.state_dir / PID_FILE, json.dumps(data, indent=2) + "\n")

    def _write_env(self, endpoints: StackEndpoints) -> None:
        lines = [f"# written by `npcflow stack up` (pid {os.getpid()}); removed by `npcflow stack down`"]
        lines += [f"{key}={value}" for key, value in (endpoints.as_env() | self.engine_env).items()]
        atomic_write(self.state_dir / STACK_ENV_FILE, "\n".join(lines) + "\n")

    def poll(self) -> list[str]:
        """Services whose process has exited, with why (for the foreground ``stack up`` watch)."""
        return [f"{p.name}: {problem}" for p in self.processes if (problem := p.exit_problem())]

    def stop(self) -> None:
        """Stop what this stack started and remove its files; harmless to call twice."""
        atexit.unregister(self.stop)
        with self._lock:
            processes, self.processes = self.processes, []
        self.endpoints = None
        made_storage, self._made_storage = self._made_storage, False
        stop_processes(processes, self.stop_timeout)
        if made_storage:  # a start that failed half way made it too
            release_storage(self.state_dir)
        if not processes:
            return
        with contextlib.suppress(StackError):
            data = read_pidfile(self.state_dir)
            if data is not None and data.get("owner_pid") == os.getpid():
                for name in (PID_FILE, STACK_ENV_FILE):
                    (self.state_dir / name).unlink(missing_ok=True)

    def __enter__(self) -> EmbeddedStack:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
