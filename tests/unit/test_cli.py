"""The CLI: the product never loads the dev stack, and a missing extra is one clear error."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from pipeline.cli import main


@pytest.mark.parametrize(
    "argv",
    [
        ["-c", "import sys, pipeline.cli; print([m for m in sys.modules if m.startswith('devstack')])"],
        ["-m", "pipeline.cli", "run", "worker", "--help"],
        ["-m", "pipeline.cli", "run", "router", "--help"],
    ],
)
def test_the_product_commands_never_import_the_dev_stack(argv: list[str]) -> None:
    probe = (
        "import runpy, sys\n"
        "sys.argv = {argv!r}\n"
        "try:\n"
        "    if sys.argv[0] == '-m':\n"
        "        runpy.run_module('pipeline.cli', run_name='__main__')\n"
        "    else:\n"
        "        exec(sys.argv[1])\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert not [m for m in sys.modules if m.startswith('devstack')], 'devstack was imported'\n"
    )
    args = ["-m", *argv[2:]] if argv[0] == "-m" else argv
    result = subprocess.run([sys.executable, "-c", probe.format(argv=args)], capture_output=True, text=True)
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
