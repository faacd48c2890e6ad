"""The documented validation scripts find npcflow in a checkout, where it is not on PATH."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "infrastructure" / "scripts" / "validation"


@pytest.mark.parametrize(
    ("script", "tier"),
    [
        ("validate-gold.sh", "gold"),
        ("validate-silver.sh", "silver"),
        ("validate-bronze.sh", "bronze"),
        ("validate-all-tiers.sh", "all"),
    ],
)
def test_a_checkouts_venv_is_used_when_npcflow_is_not_on_path(script: str, tier: str, tmp_path: Path) -> None:
    """A copy of the checkout's layout whose .venv holds a stand-in npcflow that echoes its arguments."""
    scripts = tmp_path / "infrastructure" / "scripts" / "validation"
    scripts.mkdir(parents=True)
    shutil.copy(SCRIPTS / script, scripts / script)
    fake = tmp_path / ".venv" / "bin" / "npcflow"
    fake.parent.mkdir(parents=True)
    fake.write_text('#!/bin/sh\necho "npcflow $*"\n')
    fake.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin"}
    done = subprocess.run(["bash", str(scripts / script), "--json"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"npcflow validate {tier} --json"
    fake.unlink()
    missing = subprocess.run(["bash", str(scripts / script)], env=env, capture_output=True, text=True)
    assert missing.returncode == 127
    assert "make venv" in missing.stderr
