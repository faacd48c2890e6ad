"""The event loop every npcflow process runs on: uvloop unless told otherwise.

uvloop cuts the per-message cost of asyncio's transports, and on a pipeline that is mostly
small Kafka requests that is CPU the broker and the engines get back. ``NPCFLOW_EVENT_LOOP=
asyncio`` falls back to the standard loop (e.g. for debugging).
"""

from __future__ import annotations

import logging
import os

ENV_EVENT_LOOP = "NPCFLOW_EVENT_LOOP"

log = logging.getLogger("npcflow.eventloop")


def install() -> str:
    """Install the configured loop policy for this process; returns its name."""
    if os.environ.get(ENV_EVENT_LOOP, "uvloop").strip().lower() == "asyncio":
        return "asyncio"
    import uvloop

    uvloop.install()
    return "uvloop"
