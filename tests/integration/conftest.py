"""Session fixtures: one embedded stack (real servers on loopback) shared by the suite.

The stack comes from the same launcher as ``npcflow stack up`` (Apache Kafka, PostgreSQL, Redis,
S3, the OpenSearch API); services given in the
environment (``NPCFLOW_KAFKA_BOOTSTRAP`` …) are used instead of started. Each test module that
needs topics gets its own topic prefix, so tests never read each other's traffic.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.endpoints import StackEndpoints
from devstack.stack import EmbeddedStack
from pipeline.config import Settings
from pipeline.topic_admin import create_embedded_topics


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackEndpoints]:
    embedded = EmbeddedStack(tmp_path_factory.mktemp("stack"))
    endpoints = embedded.start()
    try:
        yield endpoints
    finally:
        embedded.stop()


@pytest.fixture(scope="session")
def settings(stack: StackEndpoints) -> Settings:
    """The environment's settings (never a developer's ``stack.env``) with the stack's endpoints."""
    return stack.apply_to(Settings.from_env(stack_file=False))


@pytest.fixture(scope="session")
def kafka(settings: Settings) -> str:
    return settings.require_kafka()


@pytest.fixture(scope="module")
def prefix(settings: Settings) -> str:
    """A fresh topic prefix with the whole catalogue created under it, with the dev stack's retention."""
    value = f"t{uuid.uuid4().hex[:8]}."
    asyncio.run(create_embedded_topics(settings, value))
    return value


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("work")
