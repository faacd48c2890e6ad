"""Child processes of the dev stack: start them, record them in a pid file, stop them.

One mechanism for every service and every pipeline process: each child gets its own log file
and its own session; ``stop`` sends its stop signal, then SIGKILL to its process group. In the
foreground a child carries ``PR_SET_PDEATHSIG``, which the kernel fires when *the spawning
thread* exits, so start children from a thread that lives as long as they should (the main one).
``stack.pids`` records each detached child with its start time, so ``npcflow stack down`` never
signals a recycled pid.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from devstack.endpoints import STACK_ENV_FILE
from devstack.errors import StackError

log = logging.getLogger("npcflow.stack")

PID_FILE = "stack.pids"
LOG_DIR = "logs"

_PR_SET_PDEATHSIG = 1


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


def as_user(user: str | None) -> dict[str, Any]:
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
        kwargs = as_user(self.user)
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


def stop_records(records: list[dict[str, Any]], timeout: float = 10.0) -> list[str]:
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
    stopped = stop_records(records, timeout)
    for proc in processes:
        if proc.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=1)
    return stopped


def read_pidfile(state_dir: Path) -> dict[str, Any] | None:
    path = state_dir / PID_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StackError(f"cannot read {path}: {exc} (delete it if no embedded stack is running)") from exc


def running_from_pidfile(state_dir: Path) -> list[str]:
    """``"name (pid N)"`` for each recorded process that is still the one we started."""
    data = read_pidfile(state_dir) or {}
    return [f"{r['name']} (pid {r['pid']})" for r in data.get("processes", []) if _find_recorded(r)]


def stop_from_pidfile(state_dir: Path, *, timeout: float = 10.0) -> list[str]:
    """Stop exactly what the pid file in ``state_dir`` lists, then remove it and ``stack.env``.

    Safe to call with nothing running; returns what was stopped.
    """
    state_dir = state_dir.resolve()
    data = read_pidfile(state_dir)
    stopped = stop_records(list(data.get("processes", [])), timeout) if data else []
    for name in (PID_FILE, STACK_ENV_FILE):
        (state_dir / name).unlink(missing_ok=True)
    return stopped


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so a reader sees the old file or the new one, never half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
