"""Where the embedded brokers keep their logs: in memory where there is room, given back at the end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import psutil
import pytest

from devstack import kafka_launcher
from devstack.kafka_launcher import fresh_storage, release_storage, storage_link
from devstack.supervise import PID_FILE


@pytest.fixture
def memory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A stand-in for /dev/shm with room enough; the state dir lives beside it."""
    root = tmp_path / "shm"
    root.mkdir()
    monkeypatch.setattr(kafka_launcher, "MEMORY_ROOT", root)
    monkeypatch.setattr(kafka_launcher, "MEMORY_MIN_FREE", 1)
    (tmp_path / "state").mkdir()
    return root


def test_memory_storage_is_a_link_into_memory_and_is_given_back(memory: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    link = fresh_storage(state, "memory")
    assert link == storage_link(state) and link.is_symlink()
    target = link.resolve()
    assert target.parent == memory and (target / "owner").read_text() == str(link)
    (link / "node-1").mkdir()  # the broker writes through the link
    assert (target / "node-1").is_dir()
    release_storage(state)
    assert not link.exists() and not link.is_symlink() and not target.exists()
    assert list(memory.iterdir()) == []


def test_a_fresh_start_throws_the_last_runs_logs_away(memory: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = fresh_storage(state, "memory").resolve()
    (first / "leftover").write_text("x")
    second = fresh_storage(state, "memory").resolve()
    assert not first.exists() and list(second.iterdir()) == [second / "owner"]


def test_disk_when_asked_or_when_memory_has_no_room(
    memory: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    link = fresh_storage(state, "disk")
    assert link.is_dir() and not link.is_symlink() and list(memory.iterdir()) == []
    monkeypatch.setattr(kafka_launcher, "MEMORY_MIN_FREE", 1 << 62)
    link = fresh_storage(state, "memory")
    assert link.is_dir() and not link.is_symlink() and list(memory.iterdir()) == []
    release_storage(state)
    assert not link.exists()


def test_only_old_directories_of_stacks_that_are_gone_are_swept(memory: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    alive = fresh_storage(state, "memory").resolve()
    orphan = memory / "npcflow-kafka-orphan"  # its stack was killed and its state dir deleted
    orphan.mkdir()
    (orphan / "owner").write_text(str(tmp_path / "gone" / "kafka"))
    young = memory / "npcflow-kafka-young"  # a stack between making it and linking it
    young.mkdir()
    other = memory / "not-ours"
    other.mkdir()
    killed = tmp_path / "killed"  # its stack was killed: the state dir and link outlive it
    killed.mkdir()
    killed_dir = fresh_storage(killed, "memory").resolve()
    gone = {"name": "kafka", "pid": 2**22 + 1, "create_time": 1.0}
    (killed / PID_FILE).write_text(json.dumps({"processes": [gone]}))
    (state / PID_FILE).write_text(json.dumps({"processes": [_record(psutil.Process())]}))
    old = os.stat(alive).st_mtime - 3600
    for path in (alive, orphan, other, killed_dir):
        os.utime(path, (old, old))
    (tmp_path / "state2").mkdir()
    fresh_storage(tmp_path / "state2", "memory")  # another stack starts: it sweeps
    assert alive.exists() and young.exists() and other.exists()
    assert not orphan.exists() and not killed_dir.exists()


def _record(proc: psutil.Process) -> dict[str, object]:
    """A pid file record of a live process (here: the test itself, standing in for a broker)."""
    return {"name": "kafka", "pid": proc.pid, "create_time": proc.create_time()}
