"""Tell a supervising process (demo, tests, benchmarks) that a pipeline process is serving.

"Serving" means its consumer group has assigned it partitions, not merely that it started:
until then requests would sit in the topic. The supervisor passes ``NPCFLOW_READY_FILE``
(read into ``Settings.process.ready_file``) and waits for the file to appear.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


def mark_ready(path: str | None, detail: str = "") -> None:
    """Write the ready file atomically; nothing to do when no supervisor asked for one."""
    if not path:
        return
    target = Path(path)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "at": time.time(), "detail": detail}))
    tmp.replace(target)
