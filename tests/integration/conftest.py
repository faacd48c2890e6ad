"""Session fixtures: one embedded stack (real servers on loopback) shared by the suite.

The stack comes from the same launcher as ``npcflow stack up``; services given in the
environment (``NPCFLOW_KAFKA_BOOTSTRAP`` …) are used instead of started. Each test module that
needs topics gets its own topic prefix, so tests never read each other's traffic.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.stack import EmbeddedStack, StackEndpoints
from topics.admin import create_topics

# The product's default session timeout (joins take ≈ 3 s): shorter ones make a loaded 2-core
# machine miss heartbeats, and the rebalance that follows replays records (a legitimate duplicate).
os.environ.setdefault("NPCFLOW_SESSION_TIMEOUT_S", "6")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackEndpoints]:
    embedded = EmbeddedStack(tmp_path_factory.mktemp("stack"))
    endpoints = embedded.start()
    try:
        yield endpoints
    finally:
        embedded.stop()


@pytest.fixture(scope="session")
def kafka(stack: StackEndpoints) -> str:
    return stack.kafka_bootstrap


@pytest.fixture(scope="module")
def prefix(kafka: str) -> str:
    """A fresh topic prefix with the whole catalogue created under it."""
    value = f"t{uuid.uuid4().hex[:8]}."
    asyncio.run(create_topics(kafka, value))
    return value


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("work")
