"""Bronze as SageMaker Async Inference jobs: input to S3, ``invoke_endpoint_async``, a job id now.

``generate`` uploads the request as the job's input object, invokes the endpoint with the
request id as ``InferenceId`` and ``RequestTTLSeconds`` / ``InvocationTimeoutSeconds`` sized from
the request's remaining budget, records the job (:mod:`pipeline.job_store`), and returns at once
with ``job_id`` set: serving answers with an ``accepted`` notice, and the collector
(:mod:`workers.jobs.collector`) publishes the final reply when the output (or failure) object
appears. A replayed request whose job is already recorded is not submitted twice.

The input is the text-generation shape of SageMaker's LLM containers (TGI / LMI):
``{"inputs": prompt, "parameters": {"max_new_tokens": n, ...}}``.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any

from pipeline.config import Settings
from pipeline.job_store import JobRecord, JobStore, aws_client
from pipeline.lifecycle import Lifecycle
from topics.schemas import Request
from workers.engines.base import PLAIN_CALL, CallContext, EngineError, EngineResult, EngineUnavailable

#: SageMaker's own limits on the two per-request settings.
TTL_RANGE_S = (60, 21_600)
INVOCATION_TIMEOUT_RANGE_S = (1, 3_600)

#: Error codes that mean the endpoint is overloaded or down, not that the request is wrong.
UNAVAILABLE_CODES = {"ServiceUnavailable", "ThrottlingException", "InternalFailure", "ModelNotReadyException"}


def _clamp(value: float, bounds: tuple[int, int]) -> int:
    return int(min(bounds[1], max(bounds[0], math.ceil(value))))


def job_input(request: Request) -> dict[str, Any]:
    """The job's input object: the containers' text-generation shape plus who asked (for tracing)."""
    return {
        "inputs": request.prompt,
        "parameters": {"max_new_tokens": request.max_tokens, "temperature": 0.7, "details": True},
        "npcflow": {
            "request_id": request.request_id,
            "npc_id": request.npc_id,
            "tenant_id": request.tenant_id,
        },
    }


def invocation_limits(deadline_ms: int, now_ms: float | None = None) -> tuple[int, int]:
    """(RequestTTLSeconds, InvocationTimeoutSeconds) from the time left until the deadline."""
    now = time.time() * 1000 if now_ms is None else now_ms
    remaining_s = max(0.0, (deadline_ms - now) / 1000.0)
    return _clamp(remaining_s, TTL_RANGE_S), _clamp(remaining_s, INVOCATION_TIMEOUT_RANGE_S)


class SageMakerAsyncEngine(Lifecycle):
    """``sagemaker`` or ``sagemaker:<endpoint name>`` in a tier's engine spec."""

    def __init__(self, settings: Settings, endpoint: str | None = None) -> None:
        self.config = settings.engines.sagemaker
        self.endpoint = endpoint or self.config.endpoint
        self.store = JobStore.from_settings(settings)
        self.name = f"sagemaker-async:{self.endpoint}"
        #: Submitting is quick: only the worker's own limit applies.
        self.max_concurrency: int | None = None
        self._runtime: Any = None

    async def _start(self) -> None:
        # No endpoint configured is the operator's to fix (a ConfigError), not an outage to wait out.
        self._runtime = aws_client("sagemaker-runtime", self.config.url, "NPCFLOW_SAGEMAKER_URL")
        try:
            await self.store.ensure_bucket()
        except Exception as exc:
            bucket = self.store.bucket
            raise EngineUnavailable(f"{self.name}: cannot reach S3 bucket {bucket}: {exc}") from exc

    async def _stop(self) -> None:
        self._runtime = None

    async def generate(
        self, request: Request, deadline_ms: int, call: CallContext = PLAIN_CALL
    ) -> EngineResult:
        if self._runtime is None:
            raise EngineUnavailable(f"{self.name} used before start()")
        job_id = request.request_id
        try:
            if await self.store.get(job_id) is None:  # a replay of a submitted job is not resubmitted
                await self._submit(request, deadline_ms, call)
        except EngineError:
            raise
        except Exception as exc:
            raise self._error(exc) from exc
        return EngineResult(text="", prompt_tokens=0, completion_tokens=0, job_id=job_id)

    async def _submit(self, request: Request, deadline_ms: int, call: CallContext) -> None:
        job_id = request.request_id
        body = json.dumps(job_input(request)).encode()
        input_location = await self.store.put_object(self.store.input_key(job_id), body)
        ttl_s, timeout_s = invocation_limits(deadline_ms)
        answer = await asyncio.to_thread(
            self._runtime.invoke_endpoint_async,
            EndpointName=self.endpoint,
            ContentType="application/json",
            Accept="application/json",
            InputLocation=input_location,
            InferenceId=job_id,
            RequestTTLSeconds=ttl_s,
            InvocationTimeoutSeconds=timeout_s,
        )
        output, failure = answer.get("OutputLocation"), answer.get("FailureLocation")
        if not output:
            raise EngineError(f"{self.name}: the endpoint accepted job {job_id} but named no OutputLocation")
        record = JobRecord(
            job_id=answer.get("InferenceId") or job_id,
            request=json.loads(request.to_bytes()),
            deadline_ms=deadline_ms,
            submitted_at_ms=int(time.time() * 1000),
            engine=self.name,
            output_location=output,
            failure_location=failure or "",
            extra={
                "input_location": input_location,
                "ttl_s": ttl_s,
                "invocation_timeout_s": timeout_s,
                # The tiers tried before (a Silver request that fell back): the final reply names them.
                "chain_before": [a.model_dump(mode="json") for a in call.prior_chain],
            },
        )
        await self.store.put_pending(record)

    def _error(self, exc: Exception) -> EngineError:
        from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            message = f"{self.name}: {code or status}: {error.get('Message', '')}"[:500]
            if code in UNAVAILABLE_CODES or status == 429 or status >= 500:
                return EngineUnavailable(message)
            return EngineError(message)
        if isinstance(exc, EndpointConnectionError | BotoCoreError | OSError):
            return EngineUnavailable(f"{self.name}: {type(exc).__name__}: {exc}"[:500])
        return EngineError(f"{self.name}: {type(exc).__name__}: {exc}"[:500])
