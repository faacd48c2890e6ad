"""The router's faust transport: the worker consumer's fetch wait and a durable producer."""

from __future__ import annotations

import faust
import pytest

from pipeline import kafka
from pipeline.config import Settings
from pipeline.router import app as transport
from pipeline.router.app import create_app


def test_npcflow_scheme_resolves_to_our_transport() -> None:
    assert faust.transport.by_url("npcflow://127.0.0.1:9092") is transport.Transport


@pytest.mark.parametrize("wait_ms", ["5", "40"])
async def test_worker_consumer_gets_the_configured_fetch_wait(tmp_path, wait_ms: str) -> None:  # type: ignore[no-untyped-def]
    env = {"NPCFLOW_KAFKA_BOOTSTRAP": "127.0.0.1:9", "NPCFLOW_FETCH_MAX_WAIT_MS": wait_ms}
    settings = Settings.from_env(env, stack_file=False).with_(topic_prefix="x.")
    app, _ = create_app(settings, datadir=tmp_path)
    thread = app.consumer._thread
    assert isinstance(thread, transport.ConsumerThread)
    consumer = thread._create_worker_consumer(app.transport)
    assert consumer._fetch_max_wait_ms == int(wait_ms)  # what AIOKafkaConsumer.start() hands its Fetcher


async def test_the_router_producer_writes_like_every_producer_of_ours(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # The router forwards a request and then commits the intake past it: a write a broker acknowledged
    # alone (acks=1) and lost when it died was a request gone for good (docs/architecture.md §5).
    settings = Settings.from_env({"NPCFLOW_KAFKA_BOOTSTRAP": "127.0.0.1:9"}, stack_file=False)
    app, _ = create_app(settings, datadir=tmp_path)
    ours = kafka.producer(settings, "reference")
    for producer in (app.producer._new_producer(), ours):
        try:
            assert producer._sender._acks == -1  # every in-sync replica
            assert producer._txn_manager is not None  # idempotent: a retried batch is written once
        finally:
            await producer.stop()  # never started: only closes its client
