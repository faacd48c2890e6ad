"""The dev stack's background processes yield the CPU to the router, across sessions too."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.processes import YIELD_NICE, yield_cpu


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    """A process in its own session, as every ManagedProcess is: its own autogroup where they exist."""
    proc = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_every_thread_and_the_autogroup_are_niced(child: subprocess.Popen[bytes]) -> None:
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    autogroup, ours_group = Path(f"/proc/{child.pid}/autogroup"), Path("/proc/self/autogroup")
    # A session that never called setsid (a container's first process, say) is in the root group,
    # whose file reads empty (sched(7)): compare ours before and after rather than read a value.
    ours_before = ours_group.read_text() if ours_group.exists() else None
    # A task in a cpu cgroup other than the root is grouped by that, not by session: its file is empty.
    grouped_by_session = autogroup.exists() and autogroup.read_text() != ""
    yield_cpu(child.pid)
    threads = [int(t.name) for t in Path(f"/proc/{child.pid}/task").iterdir()]
    assert threads and {os.getpriority(os.PRIO_PROCESS, t) for t in threads} == {YIELD_NICE} != {ours}
    if grouped_by_session:  # a kernel without CONFIG_SCHED_AUTOGROUP has no file and no groups
        # Without this the threads' nice ranks them only inside their own session's group.
        assert autogroup.read_text().split()[-2:] == ["nice", str(YIELD_NICE)]
        assert ours_group.read_text() == ours_before, "ours is untouched"


def test_a_process_that_is_gone_is_no_error() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    yield_cpu(proc.pid)  # it may exit between being started and being niced: nothing to do
