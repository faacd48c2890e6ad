"""Settings every test shares: no test may pick up a developer's own stack by accident."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _default_event_loop_policy() -> Iterator[None]:
    """Undo the uvloop policy an in-process CLI call installs (``npcflow`` does, as a process would).

    The async tests share one session loop: a standard asyncio loop whose subprocesses (an MCP
    server over stdio) ask the *current* policy for a child watcher, which uvloop's policy lacks
    (NotImplementedError). A real process installs its policy before it creates its loop.
    """
    yield
    if type(asyncio.get_event_loop_policy()).__module__.startswith("uvloop"):
        asyncio.set_event_loop_policy(None)
