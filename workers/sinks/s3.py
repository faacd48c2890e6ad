"""S3 sink: each story arc as ``story-arcs/<prefix><request id>.json`` (the output's wire JSON).

The key is the request id, so writing an arc again (a replay, a retried batch) overwrites the
same object with the same bytes: idempotent without a lookup. Objects over
``NPCFLOW_SINK_MULTIPART_MB`` go up in parts (boto3's managed transfer); arcs are small today,
assets added later share the path. boto3 is synchronous: puts run on a thread pool of their own.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from pipeline.config import Settings
from pipeline.job_store import aws_client
from topics.schemas import Output
from workers.sinks.base import Sink, is_story_arc, latest_per_request
from workers.sinks.exceptions import SinkSetupError, SinkUnavailable

#: Puts in flight at once (one batch's objects go up together): botocore's connection pool holds
#: 10, and more threads than connections only open and drop connections.
PUT_THREADS = 10


class S3Sink(Sink):
    name = "s3"
    transient = (BotoConnectionError, HTTPClientError)

    def __init__(
        self, endpoint_url: str | None, bucket: str, *, prefix: str = "", multipart_mb: int = 8
    ) -> None:
        self.endpoint_url = endpoint_url
        self.bucket = bucket
        self.prefix = prefix
        self.multipart_bytes = multipart_mb * 2**20
        self._client: Any = None
        self._pool: ThreadPoolExecutor | None = None
        self._bucket_ready = False

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Sink:
        return cls(
            settings.s3_endpoint,
            settings.sinks.bucket,
            prefix=settings.topic_prefix,
            multipart_mb=settings.sinks.multipart_mb,
        )

    def key(self, request_id: str) -> str:
        return f"story-arcs/{self.prefix}{request_id}.json"

    async def _start(self) -> None:
        self._client = aws_client("s3", self.endpoint_url)
        self._pool = ThreadPoolExecutor(PUT_THREADS, thread_name_prefix="npcflow-s3-sink")

    async def _stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _ensure_bucket(self) -> None:
        """Create the bucket if missing, once, on the first write (S3 may be down when we start)."""
        if self._bucket_ready:
            return
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                raise SinkSetupError(f"S3 bucket {self.bucket!r}: {exc}") from exc
            self._client.create_bucket(Bucket=self.bucket)
        self._bucket_ready = True

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def put(self, key: str, body: bytes) -> None:
        """One object: a single PUT, or a multipart upload above the threshold."""
        try:
            if len(body) < self.multipart_bytes:
                self._client.put_object(
                    Bucket=self.bucket, Key=key, Body=body, ContentType="application/json"
                )
                return
            from boto3.s3.transfer import TransferConfig

            config = TransferConfig(
                multipart_threshold=self.multipart_bytes, multipart_chunksize=self.multipart_bytes
            )
            extra = {"ContentType": "application/json"}
            self._client.upload_fileobj(io.BytesIO(body), self.bucket, key, ExtraArgs=extra, Config=config)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if status >= 500:  # S3 busy or failing, not the object's fault
                raise SinkUnavailable(f"S3 {status}: {exc}") from exc
            raise

    async def write(self, batch: Sequence[Output]) -> None:
        arcs = [o for o in latest_per_request(batch) if is_story_arc(o)]
        if arcs:
            await self._run(self._ensure_bucket)
        results = await asyncio.gather(
            *(self._run(self.put, self.key(o.reply.request_id), o.to_bytes()) for o in arcs),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def count(self) -> int:
        """Objects under ``story-arcs/<prefix>``."""

        def count() -> int:
            self._ensure_bucket()
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.key("")[: -len(".json")]
            )
            return sum(page.get("KeyCount", 0) for page in pages)

        return int(await self._run(count))
