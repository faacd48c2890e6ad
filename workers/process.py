"""The one process shell of every long-running worker process: tier worker, sink, job collector.

Each is a :class:`Service`: started, run until it stops itself or SIGINT/SIGTERM asks it to, then
stopped (which finishes or hands back what it holds and commits). What ``run`` raised, or the
failure the service recorded (Kafka refused a result), comes back to the caller, which exits
with an error so the supervisor restarts the process and the unfinished records are replayed.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Protocol

from pipeline import eventloop
from pipeline.observability.server import mark_not_ready


class Service(Protocol):
    #: Why the service stopped itself (None: asked to, or still running).
    failure: BaseException | None

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def run(self) -> None: ...
    def request_stop(self) -> None: ...
    async def stopped(self) -> None: ...


async def serve(service: Service, *, gc_gen0: int) -> BaseException | None:
    """Run ``service`` until it stops or a signal asks it to; returns why it failed, if it did."""
    await service.start()
    # Connected, modules loaded: the collector no longer walks all that on every collection.
    eventloop.settle_heap(gc_gen0)
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        mark_not_ready("stopping")  # /readyz answers 503 while the service finishes and commits
        service.request_stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    run_task = asyncio.create_task(service.run())
    stopped = asyncio.create_task(service.stopped())
    try:
        await asyncio.wait([run_task, stopped], return_when=asyncio.FIRST_COMPLETED)
        if run_task.done() and not run_task.cancelled() and run_task.exception() is not None:
            service.failure = service.failure or run_task.exception()
    finally:
        service.request_stop()
        for task in (run_task, stopped):
            task.cancel()
        # Each ends cancelled or with what it raised (kept above as the failure), never raising here.
        await asyncio.gather(run_task, stopped, return_exceptions=True)
        await service.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return service.failure
