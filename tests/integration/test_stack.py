"""The embedded stack: what it starts, what it leaves alone, and that nothing outlives it.

Each test starts real processes (Apache Kafka, PostgreSQL, redis-server, moto, osmem-server) on free
loopback ports in its own state dir; a whole stack comes up in about 2 s on 2 cores.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis
from click.testing import CliRunner

from devstack import kafka_launcher
from devstack.cli import stack as stack_group
from devstack.endpoints import SERVICES, STACK_ENV_FILE
from devstack.kafka_launcher import storage_link
from devstack.launchers import RedisLauncher
from devstack.probes import probe_all
from devstack.stack import EmbeddedStack
from devstack.supervise import PID_FILE, stop_from_pidfile
from pipeline import config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No endpoint from the developer's shell, and a state dir of our own."""
    for var in config.ENDPOINT_VARS:
        monkeypatch.delenv(var, raising=False)
    state = tmp_path / "state"
    monkeypatch.setenv("NPCFLOW_STATE_DIR", str(state))
    return state


def _pidfile_pids(state: Path) -> dict[str, int]:
    data = json.loads((state / PID_FILE).read_text())
    return {rec["name"]: rec["pid"] for rec in data["processes"]}


def _with_descendants(pids: dict[str, int]) -> set[int]:
    """The recorded pids plus their children (PostgreSQL's backends and helpers)."""
    found = set(pids.values())
    for pid in pids.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            found.update(child.pid for child in psutil.Process(pid).children(recursive=True))
    return found


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _assert_all_gone(pids: set[int], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while (left := {pid for pid in pids if _running(pid)}) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"processes left behind: {[psutil.Process(p).cmdline() for p in left]}"


def _our_descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True) if _running(p.pid)}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_down_with_nothing_running_is_harmless(isolated_env: Path) -> None:
    assert stop_from_pidfile(isolated_env) == []
    runner = CliRunner()
    for _ in range(2):
        result = runner.invoke(stack_group, ["down"])
        assert result.exit_code == 0, result.output
        assert "nothing to stop" in result.output


def test_the_brokers_logs_live_in_memory_as_long_as_their_stack(isolated_env: Path) -> None:
    """Both ways a stack ends (its own stop, `stack down` for a detached one) give the memory back."""
    assert kafka_launcher._memory_unusable() is None, "this machine's /dev/shm is where the tests expect it"
    link = storage_link(isolated_env)
    with EmbeddedStack(isolated_env) as embedded:
        target = link.resolve()
        assert link.is_symlink() and target.parent == kafka_launcher.MEMORY_ROOT
        assert (target / "node-1" / "meta.properties").is_file()  # the broker formatted it
        assert embedded.results["kafka"] == "ok"
    assert not target.exists() and not link.is_symlink()

    detached = EmbeddedStack(isolated_env, detach=True)
    try:
        detached.start()
        target = link.resolve()
        assert target.is_dir()
        result = CliRunner().invoke(stack_group, ["down"])
        assert result.exit_code == 0, result.output
        assert not target.exists() and not link.is_symlink()
    finally:
        detached.stop()


def test_down_leaves_a_recycled_pid_alone(isolated_env: Path) -> None:
    """A pid file whose pid now belongs to another program (here: us) must not kill it."""
    isolated_env.mkdir(parents=True)
    record = {"name": "kafka", "pid": os.getpid(), "create_time": 1.0, "stop_signal": 9}
    (isolated_env / PID_FILE).write_text(json.dumps({"processes": [record]}))
    (isolated_env / STACK_ENV_FILE).write_text("NPCFLOW_KAFKA_BOOTSTRAP=127.0.0.1:1\n")
    assert stop_from_pidfile(isolated_env) == []
    assert not (isolated_env / PID_FILE).exists()
    assert not (isolated_env / STACK_ENV_FILE).exists()


def test_detached_up_probe_down_leaves_no_process(isolated_env: Path) -> None:
    embedded = EmbeddedStack(isolated_env, detach=True)
    try:
        endpoints = embedded.start()
        pids = _pidfile_pids(isolated_env)
        assert sorted(pids) == sorted(SERVICES)
        assert all(_running(pid) for pid in pids.values())
        everything = _with_descendants(pids)

        # stack.env is what every other process reads through Settings.
        assert config.load_env_file(isolated_env / STACK_ENV_FILE) == endpoints.as_env()
        settings = config.Settings.from_env()
        assert settings.kafka_bootstrap == endpoints.kafka_bootstrap
        assert settings.database_url == endpoints.database_url
        assert all(
            url.startswith(
                ("127.0.0.1:", "http://127.0.0.1:", "redis://127.0.0.1:", "postgresql://postgres@127.0.0.1:")
            )
            for url in endpoints.as_env().values()
        )

        assert probe_all(endpoints) == dict.fromkeys(SERVICES, "ok")
        # A second stack on the same state dir must refuse rather than overwrite the pid file.
        with pytest.raises(RuntimeError, match="still running"):
            EmbeddedStack(isolated_env).start()

        stopped = stop_from_pidfile(isolated_env)
        assert sorted(item.split()[0] for item in stopped) == sorted(SERVICES)
        _assert_all_gone(everything)
        assert not (isolated_env / PID_FILE).exists()
        assert not (isolated_env / STACK_ENV_FILE).exists()
        assert stop_from_pidfile(isolated_env) == []
    finally:
        embedded.stop()
    assert (isolated_env / "logs" / "kafka.log").exists()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[str]:
    """A redis-server the test starts itself, standing in for one given by the environment."""
    port = _free_port()
    proc = subprocess.Popen(
        RedisLauncher(state_dir=tmp_path, port=port).argv(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "own redis-server did not start"
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_service_given_by_environment_is_used_not_started(
    isolated_env: Path, own_redis: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NPCFLOW_REDIS_URL", own_redis)
    own_pids = _our_descendants()
    with EmbeddedStack(isolated_env) as embedded:
        assert embedded.endpoints is not None
        assert embedded.endpoints.redis_url == own_redis
        assert sorted(embedded.started) == sorted(set(SERVICES) - {"redis"})
        assert "redis" not in _pidfile_pids(isolated_env)
        started = _our_descendants() - own_pids
        assert not any("redis-server" in " ".join(psutil.Process(p).cmdline()) for p in started)
        assert config.load_env_file(isolated_env / STACK_ENV_FILE)["NPCFLOW_REDIS_URL"] == own_redis
        # The redis the stack hands out is really ours.
        redis.Redis.from_url(embedded.endpoints.redis_url).set("npcflow-test", "mine")
        assert redis.Redis.from_url(own_redis).get("npcflow-test") == b"mine"
    _assert_all_gone(started)
    assert own_pids and all(_running(pid) for pid in own_pids)  # our redis was left alone


def test_check_json_reports_all_ok_and_leaves_nothing(isolated_env: Path) -> None:
    before = _our_descendants()
    result = CliRunner().invoke(stack_group, ["check", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert {name: report[name] for name in SERVICES} == dict.fromkeys(SERVICES, "ok")
    assert 0 < report["seconds"] < 30
    assert report["broker"].startswith("Apache Kafka ") and report["broker_storage"] == "memory"
    _assert_all_gone(_our_descendants() - before)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_foreground_up_leaves_nothing_when_stopped_or_killed(
    isolated_env: Path, tmp_path: Path, signum: signal.Signals
) -> None:
    """Ctrl-C and SIGTERM stop the stack in order; SIGKILL relies on PR_SET_PDEATHSIG."""
    out, err = tmp_path / "up.out", tmp_path / "up.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "stack", "up"], cwd=REPO, stdout=stdout, stderr=stderr
        )
    try:
        deadline = time.monotonic() + 45
        while "press Ctrl-C" not in err.read_text():
            assert proc.poll() is None, f"stack up exited early: {err.read_text()}"
            assert time.monotonic() < deadline, f"stack up not ready: {err.read_text()}"
            time.sleep(0.1)
        assert "NPCFLOW_KAFKA_BOOTSTRAP" in out.read_text()
        everything = _with_descendants(_pidfile_pids(isolated_env))
        assert len(everything) >= len(SERVICES)
        memory = storage_link(isolated_env).resolve()
        assert memory.is_dir()

        proc.send_signal(signum)
        code = proc.wait(30)
        _assert_all_gone(everything)
        if signum == signal.SIGKILL:
            # Files and the brokers' memory stay behind; `down` finds nothing alive and clears them.
            assert (isolated_env / PID_FILE).exists() and memory.is_dir()
            result = CliRunner().invoke(stack_group, ["down"])
            assert result.exit_code == 0 and "nothing to stop" in result.output, result.output
        else:
            assert code == 0, err.read_text()
        assert not (isolated_env / PID_FILE).exists()
        assert not (isolated_env / STACK_ENV_FILE).exists()
        assert not memory.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
