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

from pipeline.observability import server


def mark_ready(path: str | None, detail: str = "") -> None:
    """/readyz answers 200 from now on; write the ready file atomically if a supervisor asked for one.

    The file names the process's metrics port (a free one when ``NPCFLOW_METRICS_PORT=0``).
    """
    server.mark_ready(detail)
    if not path:
        return
    target = Path(path)
    tmp = target.with_suffix(".tmp")
    body = {"pid": os.getpid(), "at": time.time(), "detail": detail, "metrics_port": server.bound_port()}
    tmp.write_text(json.dumps(body))
    tmp.replace(target)
