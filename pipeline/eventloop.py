"""The event loop every npcflow process runs on: uvloop unless told otherwise.

uvloop cuts the per-message cost of asyncio's transports, and on a pipeline that is mostly
small Kafka requests that is CPU the broker and the engines get back. ``NPCFLOW_EVENT_LOOP=
asyncio`` falls back to the standard loop (e.g. for debugging).
"""

from __future__ import annotations


def install(name: str = "uvloop") -> str:
    """Install the named loop policy (``uvloop`` or ``asyncio``) for this process; returns its name."""
    if name == "asyncio":
        return "asyncio"
    import uvloop

    uvloop.install()
    return "uvloop"


def settle_heap(gen0: int) -> None:
    """Call once a process has started (connections open, modules loaded), before it serves.

    Two things make CPython's cyclic collector costly on a pipeline process, and neither frees
    anything here (our events are freed by reference counting, not the collector):

    - every full collection walks the whole heap, i.e. all of faust, aiokafka, pydantic's
      compiled schemas and the engine's objects; ``gc.freeze()`` moves what startup allocated
      out of the collector's sight, so later collections walk only what was made since;
    - the young generation is collected every 700 net allocations of containers, which a sink
      batch of 500 parsed outputs (≈ 10 containers each) crosses a dozen times per batch; a
      threshold of ``gen0`` (``NPCFLOW_GC_GEN0``) collects a few times less often.

    Measured on the postgres sink (benchmarks/sinks.py, docs/architecture.md "Sinks"): parsing an
    output cost 41-64 µs CPU in the runner with the defaults, 15-17 µs after this.
    ``gen0 <= 0`` leaves the collector alone.
    """
    if gen0 <= 0:
        return
    import gc

    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0, gen1, gen2)
