"""``npcflow validate all --embedded --json`` end to end, as a user runs it (a child process).

It deploys the router and one worker per tier with their default engines (the embedded llama.cpp
model), probes every tier, scrapes the processes' /metrics and takes it all down. The session's
stack is given in the environment, so the command reuses its servers instead of starting a second
Kafka: the embedded stack's documented rule for services given in the environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from devstack.endpoints import StackEndpoints
from topics.catalogue import Tier

ROOT = Path(__file__).resolve().parents[2]


def test_validate_all_embedded_exits_0_with_every_tier_ok(stack: StackEndpoints, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NPCFLOW_")}
    env |= stack.as_env() | {"NPCFLOW_STATE_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "validate", "all", "--embedded", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    result = json.loads(done.stdout)
    assert result["ok"] is True
    for tier in Tier:
        assert result[tier.value]["ok"] is True, result[tier.value]
    assert result["engines"] == {t.value: "embedded" for t in Tier}
    assert result["metrics"]["ok"] is True, result["metrics"]
