"""`npcflow demo --json` end to end, as a user runs it (scripted engines keep it short)."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_demo_json_accounts_for_every_request(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NPCFLOW_")}
    env |= {"NPCFLOW_ENGINE": "scripted:latency_ms=2", "NPCFLOW_STATE_DIR": str(tmp_path / "state")}
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "demo", "--duration", "6", "--rate", "40", "--json"],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["lost"] == 0
    assert summary["sent"] == summary["replied"]
    assert sum(summary["sent"].values()) >= 200
    assert all(summary["sent"][tier] > 0 for tier in ("gold", "silver", "bronze"))
    assert summary["dead_letters"] == summary["invalid_sent"] >= 1
    assert summary["engine"] == {t: "scripted:latency_ms=2" for t in ("gold", "silver", "bronze")}
    assert summary["latency_ms"]["gold"]["p50"] is not None
    # Every reply reached every store once (the sinks run in the demo), by the sinks' rules: a row
    # and a cache entry per reply, a document per reply with words (a shed or failed reply has
    # none), an object per story arc.
    replied = sum(summary["replied"].values())
    expected = summary["stores_expected"]
    assert expected["postgres_rows"] == expected["redis_results"] == replied
    assert 0 < expected["s3_objects"] <= expected["opensearch_documents"] <= replied
    held = {k: summary["sinks"][k] for k in expected}
    assert held == expected, (held, expected, proc.stderr[-2000:])
