"""Run one tier worker process until SIGINT/SIGTERM (the shell is :func:`workers.process.serve`).

On a signal the worker finishes the engine calls it started, hands back what still waits, and
commits; if Kafka refused a result (or its consumer failed) the process exits with an error so
its supervisor restarts it and the unfinished records are replayed.
"""

from __future__ import annotations

from workers.engines.base import Engine
from workers.process import serve
from workers.tier_worker import TierWorker
from workers.worker_config import WorkerConfig, WorkerFailed


async def run_worker(config: WorkerConfig, engine: Engine, substitute: Engine | None = None) -> None:
    """Run one worker until SIGINT/SIGTERM, then finish started work and commit.

    Raises :class:`WorkerFailed` if the worker stopped because Kafka refused a result or its
    consumer failed.
    """
    worker = TierWorker(config, engine, substitute=substitute)
    failure = await serve(worker, gc_gen0=config.settings.process.gc_gen0)
    if failure is not None:
        raise WorkerFailed(f"{config.tier.value} worker stopped: {failure}") from failure
