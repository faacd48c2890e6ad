"""Every failure a user can cause is one line that names what to change; ``--debug`` shows the traceback.

The commands run as a user runs them (a child ``python -m pipeline.cli``), against endpoints
where nothing listens: no server is needed to see how npcflow reports one that is down.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.config import Settings
from pipeline.failures import explain, origin, redact

#: Port 1 on loopback: nothing listens there, so a connection is refused at once.
DOWN = "127.0.0.1:1"


def npcflow(
    *args: str, env: dict[str, str] | None = None, state_dir: Path, timeout: float = 60
) -> tuple[int, list[str], float]:
    """Run the CLI with a clean NPCFLOW_* environment; returns (exit code, output lines, seconds)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NPCFLOW_")}
    clean |= {"NPCFLOW_STATE_DIR": str(state_dir), **(env or {})}
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        env=clean,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=Path(__file__).resolve().parents[2],
    )
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return done.returncode, lines, time.monotonic() - began


@pytest.mark.parametrize(
    "command",
    [
        ["run", "router"],
        ["run", "worker", "--tier", "silver", "--engine", "scripted"],
        ["topics", "create"],
        ["validate", "gold"],
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_a_broker_that_is_down_is_one_line_naming_the_variable_and_the_environment(
    command: list[str], tmp_path: Path
) -> None:
    code, lines, seconds = npcflow(*command, env={"NPCFLOW_KAFKA_BOOTSTRAP": DOWN}, state_dir=tmp_path)
    assert code != 0
    assert seconds < 30
    assert len(lines) <= 3, lines
    assert not any("Traceback" in line for line in lines), lines
    assert (
        f"cannot reach the Kafka broker at {DOWN} (NPCFLOW_KAFKA_BOOTSTRAP from the environment)"
        in (lines[-1])
    )


def test_a_broker_from_a_stale_stack_env_names_that_file(tmp_path: Path) -> None:
    (tmp_path / "stack.env").write_text(f"NPCFLOW_KAFKA_BOOTSTRAP={DOWN}\n")
    code, lines, _ = npcflow("run", "router", state_dir=tmp_path)
    assert code != 0
    assert len(lines) == 1, lines
    assert f"(NPCFLOW_KAFKA_BOOTSTRAP from {tmp_path / 'stack.env'})" in lines[0]


def test_a_metrics_port_out_of_range_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    code, lines, _ = npcflow("run", "mcp", env={"NPCFLOW_METRICS_PORT": "99999"}, state_dir=tmp_path)
    assert code != 0
    assert len(lines) == 1, lines
    assert "NPCFLOW_METRICS_PORT" in lines[0]
    assert "99999" in lines[0]


def test_an_unwritable_path_is_one_line_naming_it(tmp_path: Path) -> None:
    code, lines, _ = npcflow("schema", "export", "/proc/npcflow-x", state_dir=tmp_path)
    assert code != 0
    assert lines == [lines[0]] and "/proc/npcflow-x" in lines[0], lines


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    code, lines, _ = npcflow("--debug", "schema", "export", "/proc/npcflow-x", state_dir=tmp_path)
    assert code != 0
    assert any(line.startswith("Traceback") for line in lines), lines


def test_job_get_without_s3_is_a_clear_error_not_a_call_to_aws(tmp_path: Path) -> None:
    # No network and no AWS credentials here: a call to AWS would take seconds to fail, and say so.
    code, lines, seconds = npcflow("job", "get", "abc", state_dir=tmp_path)
    assert code != 0
    assert len(lines) == 1, lines
    assert "no S3 configured: set NPCFLOW_S3_ENDPOINT" in lines[0]
    assert seconds < 10


def test_version_prints_the_package_version(tmp_path: Path) -> None:
    from importlib.metadata import version

    code, lines, _ = npcflow("--version", state_dir=tmp_path)
    assert code == 0
    assert lines == [f"npcflow {version('npcflow')}"]


def test_origin_says_environment_stack_env_or_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(state_dir=tmp_path)
    (tmp_path / "stack.env").write_text("NPCFLOW_REDIS_URL=redis://from-file:6379\n")
    monkeypatch.setenv("NPCFLOW_DATABASE_URL", "postgresql://env")
    monkeypatch.delenv("NPCFLOW_REDIS_URL", raising=False)
    assert origin("NPCFLOW_DATABASE_URL", "postgresql://env", settings) == (
        "NPCFLOW_DATABASE_URL from the environment"
    )
    assert origin("NPCFLOW_REDIS_URL", "redis://from-file:6379", settings) == (
        f"NPCFLOW_REDIS_URL from {tmp_path / 'stack.env'}"
    )
    assert origin("NPCFLOW_S3_ENDPOINT", None, settings) == "NPCFLOW_S3_ENDPOINT is not set"


def test_each_client_librarys_connection_error_names_its_endpoint_without_its_password(
    tmp_path: Path,
) -> None:
    import psycopg
    import redis
    from aiokafka.errors import KafkaConnectionError
    from botocore.exceptions import EndpointConnectionError

    settings = Settings(
        state_dir=tmp_path,
        kafka_bootstrap=DOWN,
        database_url="postgresql://npc:s3cret@db:5432/npcflow",
        redis_url="redis://cache:6379/0",
        s3_endpoint="http://s3:9000",
    )
    wrapped = RuntimeError("while starting")
    wrapped.__cause__ = psycopg.OperationalError("connection refused")
    cases = {
        "the Kafka broker at 127.0.0.1:1": KafkaConnectionError("Unable to bootstrap"),
        "PostgreSQL at postgresql://npc:***@db:5432/npcflow": wrapped,
        "Redis at redis://cache:6379/0": redis.ConnectionError("refused"),
        "S3 at http://s3:9000": EndpointConnectionError(endpoint_url="http://s3:9000"),
    }
    for expected, exc in cases.items():
        line = explain(exc, settings)
        assert line is not None and f"cannot reach {expected}" in line, line
        assert "s3cret" not in line
    assert explain(ValueError("a bug"), settings) is None
    assert redact("postgresql://u:p@h/db") == "postgresql://u:***@h/db"


def test_an_unexpected_error_is_one_line_that_points_at_debug() -> None:
    from pipeline.command_line import one_line

    line = one_line(KeyError("x"), None)
    assert "--debug" in line and "KeyError" in line


@pytest.mark.parametrize(
    ("command", "hint"),
    [("replay", "reinstall npcflow"), ("stack", "pip install 'npcflow[embedded]'")],
)
def test_a_missing_lazy_package_names_what_to_install(
    command: str, hint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The image once lacked replay/: the hint must not send an analyst to the embedded stack."""
    from click.testing import CliRunner

    from pipeline import cli, command_line

    def missing(name: str) -> object:
        raise ImportError(f"No module named {name.split('.')[0]!r}")

    monkeypatch.setattr(command_line.importlib, "import_module", missing)
    result = CliRunner().invoke(cli.main, [command], env={"NPCFLOW_STATE_DIR": str(tmp_path)})
    assert result.exit_code == 1
    assert hint in result.output
    assert ("embedded" in result.output) == (command == "stack")
