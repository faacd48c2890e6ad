"""Probes: each talks the service's own protocol, because an open port only proves a listener."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from devstack.endpoints import SERVICES, StackEndpoints
from devstack.errors import StackError
from pipeline import config, kafka
from pipeline.config import Settings

S3_BUCKET = "npcflow"
KAFKA_PROBE_TOPIC = "npcflow.stack-probe"
_PROBE_CLIENT_ID = "npcflow-stack-probe"


def probe_kafka(bootstrap: str, timeout: float = 10.0) -> None:
    """Produce one message and read it back, since metadata alone passes on a half-working broker."""
    request_timeout_ms = max(1000, int(timeout * 1000))
    asyncio.run(asyncio.wait_for(_kafka_roundtrip(bootstrap, request_timeout_ms), timeout))


async def _kafka_roundtrip(bootstrap: str, request_timeout_ms: int) -> None:
    from aiokafka import TopicPartition
    from aiokafka.admin import NewTopic

    settings = Settings(kafka_bootstrap=bootstrap)
    # Create the topic explicitly: a real broker may have auto-creation off (Tansu has it on).
    admin = kafka.admin(settings, _PROBE_CLIENT_ID, request_timeout_ms=request_timeout_ms)
    try:
        await admin.start()
        await kafka.create_missing_topics(admin, [NewTopic(KAFKA_PROBE_TOPIC, 1, 1)])
    finally:
        await admin.close()

    payload = uuid.uuid4().hex.encode()
    producer = kafka.producer(settings, _PROBE_CLIENT_ID, request_timeout_ms=request_timeout_ms)
    try:
        await producer.start()
        sent = await producer.send_and_wait(KAFKA_PROBE_TOPIC, payload, partition=0)
    finally:
        await producer.stop()

    consumer = kafka.consumer(settings, _PROBE_CLIENT_ID, request_timeout_ms=request_timeout_ms)
    try:
        await consumer.start()
        partition = TopicPartition(KAFKA_PROBE_TOPIC, sent.partition)
        consumer.assign([partition])
        consumer.seek(partition, sent.offset)
        message = await consumer.getone()
        if message.value != payload:
            raise StackError(f"read back {message.value!r} at offset {sent.offset}, expected {payload!r}")
    finally:
        await consumer.stop()


def probe_postgres(url: str, timeout: float = 5.0) -> None:
    """``SELECT 1`` over psycopg 3, the driver the pipeline itself uses."""
    import psycopg

    with psycopg.connect(url, connect_timeout=max(1, int(timeout)), autocommit=True) as conn:
        row = conn.execute("SELECT 1").fetchone()
        if row != (1,):
            raise StackError(f"SELECT 1 returned {row!r}")


def probe_redis(url: str, timeout: float = 5.0) -> None:
    """PING with redis-py."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        if not client.ping():
            raise StackError("PING did not return PONG")
    finally:
        client.close()


def probe_s3(endpoint: str, timeout: float = 5.0) -> None:
    """Create the ``npcflow`` bucket (idempotently), which the sinks need anyway."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    env = config.environ()
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=env.get("AWS_DEFAULT_REGION", "us-east-1"),
        # Dummy credentials suit moto; an external S3 gets the caller's real ones if set.
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID", "npcflow"),
        aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY", "npcflow"),
        config=Config(connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 1}),
    )
    try:
        client.create_bucket(Bucket=S3_BUCKET)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
    client.head_bucket(Bucket=S3_BUCKET)


def probe_opensearch(url: str, timeout: float = 5.0) -> None:
    """Cluster health through opensearch-py; red counts as a failure."""
    from opensearchpy import OpenSearch

    client = OpenSearch(hosts=[url], timeout=timeout, max_retries=0, retry_on_timeout=False)
    try:
        health = client.cluster.health()
        if health.get("status") not in ("green", "yellow"):
            raise StackError(f"cluster health is {health.get('status')!r}")
    finally:
        client.close()


PROBES: dict[str, Callable[[str, float], None]] = {
    "kafka": probe_kafka,
    "postgres": probe_postgres,
    "redis": probe_redis,
    "s3": probe_s3,
    "opensearch": probe_opensearch,
}


def describe(exc: BaseException) -> str:
    """``Type: first line of the message``, short enough for a per-service report."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def port_open(port: int) -> None:
    """A cheap TCP connect first, so client libraries don't log connection errors while we wait."""
    with socket.create_connection(("127.0.0.1", port), timeout=1.0):
        pass


def wait_until(
    name: str,
    attempt: Callable[[], None],
    deadline: float,
    *,
    alive: Callable[[], str | None] | None = None,
    cancel: threading.Event | None = None,
) -> None:
    """Retry ``attempt`` until it passes or the deadline; fail at once if the process died."""
    last = "never tried"
    while True:
        if cancel is not None and cancel.is_set():
            raise StackError(f"{name}: startup cancelled")
        if alive is not None and (died := alive()):
            raise StackError(f"{name}: {died}")
        try:
            attempt()
            return
        except Exception as exc:
            last = describe(exc)
        if time.monotonic() >= deadline:
            raise StackError(f"{name}: not ready before the deadline; last error: {last}")
        time.sleep(0.1)


def probe_all(endpoints: StackEndpoints, *, timeout: float = 10.0) -> dict[str, str]:
    """Probe every service concurrently; ``"ok"`` or an error message naming the service."""
    deadline = time.monotonic() + timeout

    def one(name: str) -> str:
        url = endpoints.for_service(name)
        try:
            wait_until(name, lambda: PROBES[name](url, 5.0), deadline)
        except Exception as exc:
            return str(exc) if isinstance(exc, StackError) else f"{name}: {describe(exc)}"
        return "ok"

    with ThreadPoolExecutor(max_workers=len(SERVICES), thread_name_prefix="npcflow-probe") as pool:
        return dict(zip(SERVICES, pool.map(one, SERVICES), strict=True))
