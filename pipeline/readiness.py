"""Tell a supervising process (demo, tests, benchmarks) that a pipeline process is serving.

"Serving" means its consumer group has assigned it partitions, not merely that it started:
until then requests would sit in the topic. The supervisor passes ``NPCFLOW_READY_FILE`` and
waits for the file to appear.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

ENV_READY_FILE = "NPCFLOW_READY_FILE"


def mark_ready(detail: str = "") -> None:
    path = os.environ.get(ENV_READY_FILE)
    if not path:
        return
    target = Path(path)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "at": time.time(), "detail": detail}))
    tmp.replace(target)
