"""The process shell every worker process runs in: signals, readiness, the failure handed back."""

from __future__ import annotations

import asyncio
import os
import signal

from pipeline.observability import server
from workers.process import serve


class Service:
    """Runs until asked to stop, or fails when told to."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.failure: BaseException | None = None
        self.fail = fail
        self.calls: list[str] = []
        self._stopping = asyncio.Event()
        self.running = asyncio.Event()

    async def start(self) -> None:
        self.calls.append("start")

    async def stop(self) -> None:
        self.calls.append("stop")

    async def run(self) -> None:
        self.calls.append("run")
        self.running.set()
        if self.fail is not None:
            raise self.fail
        await self._stopping.wait()

    def request_stop(self) -> None:
        self._stopping.set()

    async def stopped(self) -> None:
        await self._stopping.wait()


async def test_sigterm_marks_the_process_not_ready_then_stops_it_cleanly() -> None:
    service = Service()
    server.STATE.ready.set()
    running = asyncio.create_task(serve(service, gc_gen0=0))
    await asyncio.wait_for(service.running.wait(), 5)
    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(running, 5) is None
    assert service.calls == ["start", "run", "stop"]
    assert not server.STATE.ready.is_set() and server.STATE.detail == "stopping"


async def test_what_run_raised_comes_back_after_the_service_stopped() -> None:
    service = Service(fail=RuntimeError("kafka refused a reply"))
    failure = await asyncio.wait_for(serve(service, gc_gen0=0), 5)
    assert isinstance(failure, RuntimeError) and service.calls == ["start", "run", "stop"]
