"""A local SageMaker-Async-compatible endpoint, so the whole Bronze job path runs for real here.

It answers the REST call boto3's ``sagemaker-runtime`` client sends for ``invoke_endpoint_async``
(``POST /endpoints/<name>/async-invocations`` with the ``X-Amzn-SageMaker-*`` headers; point the
client's ``endpoint_url`` at this server) with 202, the ``InferenceId`` and the output and
failure locations, exactly as SageMaker does. Then, like SageMaker's queue: one job at a time,
it reads the input object from S3 (the dev stack's moto server), runs the embedded engine on it,
and writes the output object (``{"generated_text": ..., "details": {...}}``, the shape of
SageMaker's LLM containers) or, when the job fails, times out (``InvocationTimeoutSeconds``) or
waited past its ``RequestTTLSeconds``, the failure object. moto's own SageMaker emulation returns
canned output and writes nothing, which is why this exists.

``python -m devstack.sagemaker_local --port P --s3 http://127.0.0.1:S3PORT``; ``GET /ping`` is
its health check (SageMaker containers' own).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass

from aiohttp import web

from pipeline.job_store import JobStore, split_s3_uri
from topics.fields import MAX_PROMPT_CHARS, MAX_TOKENS_LIMIT
from topics.headers import now_ms
from topics.schemas import Request
from workers.engines.embedded import EmbeddedEngine

log = logging.getLogger("npcflow.sagemaker_local")

H = "X-Amzn-SageMaker-"
#: SageMaker's defaults when the caller sets neither.
DEFAULT_TTL_S = 21_600
DEFAULT_INVOCATION_TIMEOUT_S = 900


@dataclass
class Invocation:
    inference_id: str
    endpoint: str
    input_location: str
    output_location: str
    failure_location: str
    received: float
    ttl_s: float
    timeout_s: float


class LocalAsyncEndpoint:
    """The HTTP face and the one-at-a-time job queue, around one embedded engine."""

    def __init__(self, s3_endpoint: str, threads: int = 1) -> None:
        self.s3 = JobStore(s3_endpoint, bucket="unused")
        self.engine = EmbeddedEngine(persona="bronze", threads=threads)
        self.queue: asyncio.Queue[Invocation] = asyncio.Queue()
        self.done = 0
        self.failed = 0
        self._worker: asyncio.Task[None] | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/ping", self.ping)
        app.router.add_post("/endpoints/{name}/async-invocations", self.invoke)
        app.on_startup.append(self._startup)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _startup(self, _: web.Application) -> None:
        await self.engine.start()
        self._worker = asyncio.create_task(self._work())

    async def _cleanup(self, _: web.Application) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        await self.engine.stop()

    async def ping(self, _: web.Request) -> web.Response:
        return web.json_response({"queued": self.queue.qsize(), "done": self.done, "failed": self.failed})

    async def invoke(self, http: web.Request) -> web.Response:
        headers = http.headers
        name = http.match_info["name"]
        input_location = headers.get(H + "InputLocation", "")
        try:
            bucket, _ = split_s3_uri(input_location)
            ttl_s = float(headers.get(H + "RequestTTLSeconds") or DEFAULT_TTL_S)
            timeout_s = float(headers.get(H + "InvocationTimeoutSeconds") or DEFAULT_INVOCATION_TIMEOUT_S)
        except ValueError as exc:
            return _validation_error(str(exc))
        inference_id = headers.get(H + "Inference-Id") or uuid.uuid4().hex
        safe = re.sub(r"[^A-Za-z0-9_.:-]", "_", inference_id)[:64]
        base = f"s3://{bucket}/sagemaker-local/{name}"
        invocation = Invocation(
            inference_id=inference_id,
            endpoint=name,
            input_location=input_location,
            output_location=f"{base}/output/{safe}.out",
            failure_location=f"{base}/failure/{safe}.out",
            received=time.monotonic(),
            ttl_s=ttl_s,
            timeout_s=timeout_s,
        )
        self.queue.put_nowait(invocation)
        return web.json_response(
            {"InferenceId": inference_id},
            status=202,
            headers={
                H + "OutputLocation": invocation.output_location,
                H + "FailureLocation": invocation.failure_location,
            },
        )

    async def _work(self) -> None:
        while True:
            invocation = await self.queue.get()
            try:
                body = await self._run(invocation)
                await self._write(invocation.output_location, body)
                self.done += 1
            except Exception as exc:  # every failure becomes the failure object, as on SageMaker
                log.warning("job %s failed: %s", invocation.inference_id, exc)
                await self._write(invocation.failure_location, f"{type(exc).__name__}: {exc}".encode())
                self.failed += 1

    async def _run(self, invocation: Invocation) -> bytes:
        waited = time.monotonic() - invocation.received
        if waited > invocation.ttl_s:
            ttl = invocation.ttl_s
            raise TimeoutError(f"request TTL of {ttl:g} s expired after {waited:.1f} s in the queue")
        raw = await self.s3.read(invocation.input_location)
        if raw is None:
            raise FileNotFoundError(f"input object {invocation.input_location} does not exist")
        payload = json.loads(raw)
        params = payload.get("parameters") or {}
        request = Request(
            request_id=re.sub(r"[^A-Za-z0-9_.:-]", "_", invocation.inference_id)[:64],
            npc_id="sagemaker-job",
            tenant_id="sagemaker-local",
            prompt=str(payload["inputs"])[:MAX_PROMPT_CHARS] or " ",
            max_tokens=max(1, min(int(params.get("max_new_tokens", 64)), MAX_TOKENS_LIMIT)),
            created_at_ms=now_ms(),
        )
        deadline = now_ms() + int(invocation.timeout_s * 1000)
        try:
            result = await asyncio.wait_for(self.engine.generate(request, deadline), invocation.timeout_s)
        except TimeoutError:
            raise TimeoutError(
                f"invocation timed out after {invocation.timeout_s:g} s (InvocationTimeoutSeconds)"
            ) from None
        details = {"prompt_tokens": result.prompt_tokens, "generated_tokens": result.completion_tokens}
        return json.dumps({"generated_text": result.text, "details": details}).encode()

    async def _write(self, location: str, body: bytes) -> None:
        bucket, key = split_s3_uri(location)
        await asyncio.to_thread(self.s3.s3.put_object, Bucket=bucket, Key=key, Body=body)


def _validation_error(message: str) -> web.Response:
    """The error shape boto3 parses for a rest-json service."""
    headers = {"x-amzn-ErrorType": "ValidationError"}
    return web.json_response({"message": message}, status=400, headers=headers)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--s3", required=True, help="S3 endpoint URL (the dev stack's moto server)")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    endpoint = LocalAsyncEndpoint(args.s3, threads=args.threads)
    web.run_app(endpoint.app(), host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
