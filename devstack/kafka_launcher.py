"""Apache Kafka in the dev stack: KRaft nodes (broker and controller in one process), one or three.

The jars and the ``java`` check come from :mod:`devstack.kafka_dist`; this module says how a node
is configured, formatted, started, probed and stopped, as every other service's launcher does
(:mod:`devstack.launchers`).
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import signal
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from devstack import kafka_dist
from devstack.errors import StackError
from devstack.launchers import Launcher, free_ports
from devstack.supervise import LOG_DIR, ManagedProcess
from pipeline import kafka
from pipeline.config import Settings


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
