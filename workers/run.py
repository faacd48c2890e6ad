"""Run one tier worker process until SIGINT/SIGTERM: the shell around :class:`TierWorker`.

On a signal the worker finishes the engine calls it started, hands back what still waits, and
commits; if Kafka refused a result (or its consumer failed) the process exits with an error so
its supervisor restarts it and the unfinished records are replayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

from pipeline import eventloop
from workers.engines.base import Engine
from workers.tier_worker import TierWorker
from workers.worker_config import WorkerConfig, WorkerFailed


async def run_worker(config: WorkerConfig, engine: Engine, substitute: Engine | None = None) -> None:
    """Run one worker until SIGINT/SIGTERM, then finish started work and commit.

    Raises :class:`WorkerFailed` if the worker stopped because Kafka refused a result or its
    consumer failed.
    """
    worker = TierWorker(config, engine, substitute=substitute)
    await worker.start()
    eventloop.settle_heap(config.settings.process.gc_gen0)
    loop = asyncio.get_running_loop()
    run_task = asyncio.create_task(worker.run())
    stopped = asyncio.create_task(worker.stopped())
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, worker.request_stop)
    try:
        await asyncio.wait([run_task, stopped], return_when=asyncio.FIRST_COMPLETED)
        if run_task.done() and not run_task.cancelled() and run_task.exception() is not None:
            worker.failure = worker.failure or run_task.exception()
    finally:
        for task in (run_task, stopped):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await worker.stop()
    if worker.failure is not None:
        raise WorkerFailed(f"{config.tier.value} worker stopped: {worker.failure}") from worker.failure
