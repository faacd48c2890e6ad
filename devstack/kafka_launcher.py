"""Apache Kafka in the dev stack: KRaft nodes (broker and controller in one process), one or three.

The jars and the ``java`` check come from :mod:`devstack.kafka_dist`; this module says how a node
is configured, formatted, started, probed and stopped, as every other service's launcher does
(:mod:`devstack.launchers`).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from devstack import kafka_dist
from devstack.errors import StackError
from devstack.launchers import Launcher, free_ports
from devstack.supervise import LOG_DIR, ManagedProcess, running_from_pidfile
from pipeline import kafka
from pipeline.config import Settings

log = logging.getLogger("npcflow.stack")

#: The memory-backed filesystem (tmpfs) Linux machines mount, where the brokers' logs go by default.
MEMORY_ROOT = Path("/dev/shm")
#: Less room than this there and the logs go on disk: a dev stack keeps ten minutes of traffic
#: (``EMBEDDED_TOPIC_CONFIG``), which at the benchmarks' 1,000 req/s is a few hundred MiB.
MEMORY_MIN_FREE = 2 * 1024**3
_MEMORY_PREFIX = "npcflow-kafka-"
#: In each memory directory: the ``<state dir>/kafka`` link that owns it (for :func:`_sweep_orphans`).
_OWNER_FILE = "owner"
#: A memory directory younger than this is never swept: its stack may be between creating and linking it.
_SWEEP_AFTER_S = 300.0


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
    #: ``memory`` or ``disk`` (``NPCFLOW_KAFKA_STORAGE``): where :func:`fresh_storage` puts the logs.
    storage: Literal["memory", "disk"] = "memory"
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
        return storage_link(self.state_dir)

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
        fresh_storage(self.state_dir, self.storage)
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
            # G1's own default goal, not Kafka's production 20 ms: on 2 cores a young pause costs
            # 7-18 ms whatever the goal, so a lower goal only collects more often (docs §5).
            "-XX:MaxGCPauseMillis=200",
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


def storage_link(state_dir: Path) -> Path:
    """The brokers' data directory: a directory on disk, or a link to one in memory."""
    return state_dir / "kafka"


def fresh_storage(state_dir: Path, storage: Literal["memory", "disk"]) -> Path:
    """Empty storage for the brokers of the stack in ``state_dir``, in memory where asked and possible.

    In memory because on disk (ext4, measured on these machines) the first write to each new
    index file of a log segment faults in a page of a sparse memory-mapped file: 2.4 ms on an idle
    machine, about 24 ms on a loaded one, with the partition's lock held. Two of them (offset and
    time index) held a produce 44-61 ms in the demo every few seconds, replies included
    (docs/architecture.md §5, "The brokers' logs live in memory"). On tmpfs the same write takes
    0.03 ms. The stack throws its broker data away at every start, so memory loses nothing.
    """
    release_storage(state_dir)
    _sweep_orphans()
    link = storage_link(state_dir)
    if storage == "memory":
        why_not = _memory_unusable()
        if why_not is None:
            target = Path(tempfile.mkdtemp(prefix=_MEMORY_PREFIX, dir=MEMORY_ROOT))
            (target / _OWNER_FILE).write_text(str(link))
            link.symlink_to(target, target_is_directory=True)
            log.info("kafka: broker logs in memory, %s (%s)", target, link)
            return link
        log.info("kafka: broker logs on disk, %s: %s", link, why_not)
    link.mkdir(parents=True)
    return link


def release_storage(state_dir: Path) -> None:
    """Remove the brokers' logs of the stack in ``state_dir``, after its brokers have stopped.

    Memory is given back at once; a stack that was killed leaves its directory to the next
    stack's :func:`_sweep_orphans`.
    """
    link = storage_link(state_dir)
    if link.is_symlink():
        shutil.rmtree(link.readlink(), ignore_errors=True)
        link.unlink()
    else:
        shutil.rmtree(link, ignore_errors=True)


def _memory_unusable() -> str | None:
    """Why the brokers' logs cannot go in :data:`MEMORY_ROOT`, or None when they can."""
    if not MEMORY_ROOT.is_dir() or not os.access(MEMORY_ROOT, os.W_OK | os.X_OK):
        return f"no writable {MEMORY_ROOT}"
    stats = os.statvfs(MEMORY_ROOT)
    free = stats.f_bavail * stats.f_frsize
    if free < MEMORY_MIN_FREE:
        return f"{MEMORY_ROOT} has {free / 1024**2:.0f} MiB free, under {MEMORY_MIN_FREE / 1024**3:.0f} GiB"
    return None


def _sweep_orphans() -> None:
    """Remove memory directories whose stack is gone: killed, or its state dir deleted with it."""
    for path in MEMORY_ROOT.glob(f"{_MEMORY_PREFIX}*") if MEMORY_ROOT.is_dir() else ():
        try:
            stat = path.stat()
            if stat.st_uid != os.getuid() or time.time() - stat.st_mtime < _SWEEP_AFTER_S:
                continue
            link = Path((path / _OWNER_FILE).read_text())
            # A killed stack's state dir (a test's, say) may outlive it, link and all: its pid
            # file then lists no live process.
            owned = link.is_symlink() and link.readlink() == path and bool(running_from_pidfile(link.parent))
        except OSError:
            owned = False  # no owner file: not made by fresh_storage, or half made long ago
        except StackError:
            owned = True  # an unreadable pid file: whether its stack runs is unknown, so keep it
        if not owned:
            log.info("kafka: removing %s, left by a stack that is gone", path)
            shutil.rmtree(path, ignore_errors=True)


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
