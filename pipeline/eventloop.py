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
