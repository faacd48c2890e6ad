"""The job store: one JSON record per SageMaker Async job, in S3, readable by anyone with the id.

``<ns>pending/<job id>.json`` while the job runs; ``<ns>done/<job id>.json`` once the collector
has published its final reply (the pending record is then removed). ``<ns>`` is
``jobs/<topic prefix>``, so pipelines sharing a bucket (tests, staging) never see each other's
jobs. A job's id is its request id (SageMaker's ``InferenceId``), which makes a replayed request
resubmit under the same id instead of starting a second job.

boto3 is synchronous: every call runs in a thread (``asyncio.to_thread``) so the event loop of
a worker or collector never blocks on S3.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.config import ConfigError, Settings

PENDING = "pending"
COMPLETED = "completed"
FAILED = "failed"


def aws_client(service: str, endpoint_url: str | None, variable: str = "NPCFLOW_S3_ENDPOINT") -> Any:
    """A boto3 client on an endpoint someone configured; a custom one (moto, MinIO, the dev stack)
    gets dummy keys if none are set.

    Without an endpoint boto3 would talk to AWS itself: a dev install, a test or a typo must never
    reach a public cloud, so AWS too is an endpoint to name (``variable``) rather than a default.
    """
    import boto3
    from botocore.config import Config

    if not endpoint_url:
        raise ConfigError(
            f"no {service} endpoint configured: set {variable}=URL (the dev stack's comes from "
            "`npcflow stack up --detach`; on AWS name its regional endpoint, "
            "e.g. https://s3.eu-west-1.amazonaws.com); npcflow never defaults to a public cloud"
        )

    session = boto3.session.Session()
    kwargs: dict[str, Any] = {
        "endpoint_url": endpoint_url,
        "region_name": session.region_name or "us-east-1",
        "config": Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=30),
    }
    if endpoint_url and session.get_credentials() is None:
        kwargs |= {"aws_access_key_id": "npcflow", "aws_secret_access_key": "npcflow"}
    return session.client(service, **kwargs)


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` → (bucket, key); anything else is a ValueError naming it."""
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise ValueError(f"not an s3://bucket/key location: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


@dataclass
class JobRecord:
    """What is known of one job; ``request`` is the request event as JSON (its wire form)."""

    job_id: str
    request: dict[str, Any]
    deadline_ms: int
    submitted_at_ms: int
    engine: str
    output_location: str
    failure_location: str
    state: str = PENDING
    #: The final reply (wire JSON), once published.
    reply: dict[str, Any] | None = None
    error: str | None = None
    finished_at_ms: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> JobRecord:
        data = json.loads(raw)
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


class JobStore:
    """Job records in ``bucket`` under ``jobs/<prefix>``; the S3 client is made on first use."""

    def __init__(self, s3_endpoint: str | None, bucket: str, prefix: str = "") -> None:
        self.s3_endpoint = s3_endpoint
        self.bucket = bucket
        self.namespace = f"jobs/{prefix}"
        self._s3: Any = None

    @classmethod
    def from_settings(cls, settings: Settings) -> JobStore:
        return cls(settings.s3_endpoint, settings.engines.sagemaker.bucket, settings.topic_prefix)

    @property
    def s3(self) -> Any:
        if self._s3 is None:
            self._s3 = aws_client("s3", self.s3_endpoint)
        return self._s3

    def key(self, state: str, job_id: str) -> str:
        return f"{self.namespace}{'pending' if state == PENDING else 'done'}/{job_id}.json"

    def input_key(self, job_id: str) -> str:
        return f"{self.namespace}input/{job_id}.json"

    async def ensure_bucket(self) -> None:
        def create() -> None:
            from botocore.exceptions import ClientError

            try:
                self.s3.head_bucket(Bucket=self.bucket)
            except ClientError:
                self.s3.create_bucket(Bucket=self.bucket)

        await asyncio.to_thread(create)

    async def put_object(self, key: str, body: bytes, content_type: str = "application/json") -> str:
        await asyncio.to_thread(
            self.s3.put_object, Bucket=self.bucket, Key=key, Body=body, ContentType=content_type
        )
        return f"s3://{self.bucket}/{key}"

    async def put_pending(self, record: JobRecord) -> None:
        await self.put_object(self.key(PENDING, record.job_id), record.to_bytes())

    async def finish(self, record: JobRecord) -> None:
        """Write the done record first, then drop the pending one: a crash between leaves both,
        and the next collector publishes the reply again (a duplicate the client drops)."""
        await self.put_object(self.key(COMPLETED, record.job_id), record.to_bytes())
        pending = self.key(PENDING, record.job_id)
        await asyncio.to_thread(self.s3.delete_object, Bucket=self.bucket, Key=pending)

    async def pending(self) -> list[str]:
        """Ids of the jobs not finished yet (every page of the listing)."""

        def ids() -> list[str]:
            out: list[str] = []
            paginator = self.s3.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{self.namespace}pending/"):
                for obj in page.get("Contents") or []:
                    name = obj["Key"].rsplit("/", 1)[-1]
                    out.append(name.removesuffix(".json"))
            return out

        return await asyncio.to_thread(ids)

    async def get(self, job_id: str) -> JobRecord | None:
        """The job's record: done if finished, else pending; None if no such job."""
        for state in (COMPLETED, PENDING):
            raw = await self.read(f"s3://{self.bucket}/{self.key(state, job_id)}")
            if raw is not None:
                return JobRecord.from_bytes(raw)
        return None

    async def read(self, uri: str) -> bytes | None:
        """The object at ``uri``, or None while it does not exist."""
        bucket, key = split_s3_uri(uri)

        def get() -> bytes | None:
            from botocore.exceptions import ClientError

            try:
                return bytes(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                    return None
                raise

        return await asyncio.to_thread(get)
