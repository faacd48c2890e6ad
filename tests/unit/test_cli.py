"""The CLI: the product never loads the dev stack, and a missing extra is one clear error."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from pipeline.cli import main

#: Runs one command in a fresh interpreter: its body runs for real (every lazy import in it happens)
#: and stops where the process would start serving, so no broker, engine or port is needed.
PROBE = """
import sys
from click.testing import CliRunner

import pipeline.router.app
import workers.jobs.collector
import workers.run


async def _serve(*args, **kwargs):
    return None


pipeline.router.app.run_router = lambda *args, **kwargs: None
workers.run.run_worker = _serve
workers.jobs.collector.run_collector = _serve
import pipeline.cli
from pipeline.cli import main

pipeline.cli._broker_up = lambda settings: None  # the start-up probe would ask the broker

result = CliRunner().invoke(main, {argv!r}, catch_exceptions=False)
assert result.exit_code == 0, result.output
loaded = [m for m in sys.modules if m.split(".")[0] == "devstack"]
assert not loaded, f"devstack was imported: {{loaded}}"
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "router"],
        ["run", "worker", "--tier", "silver", "--engine", "scripted"],
        ["run", "worker", "--tier", "gold", "--engine", "scripted"],  # builds Silver's engine too
        ["run", "collector"],
    ],
)
def test_the_product_commands_never_import_the_dev_stack(argv: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NPCFLOW_METRICS_PORT"}
    env["NPCFLOW_ENGINE_SILVER"] = "scripted"  # the Gold worker's substitute, never the embedded model
    env["NPCFLOW_KAFKA_BOOTSTRAP"] = "127.0.0.1:9"  # configured (never asked: the probe is stubbed)
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr


def test_without_the_embedded_extra_stack_commands_say_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "devstack", None)  # import devstack → ImportError
    monkeypatch.delitem(sys.modules, "devstack.cli", raising=False)
    result = CliRunner().invoke(main, ["stack", "up"])
    assert result.exit_code != 0
    assert "npcflow stack" in result.output and "embedded stack" in result.output
    assert "Traceback" not in result.output


def test_a_malformed_setting_is_one_line_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NPCFLOW_MAX_PENDING", "lots")
    result = CliRunner().invoke(main, ["topics", "list"])
    assert result.exit_code != 0
    assert "NPCFLOW_MAX_PENDING='lots': not an integer" in result.output
