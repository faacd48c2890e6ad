"""Settings are declared once: bad values are refused by name, sources are reported, docs follow.

The environment is always passed in (or set with monkeypatch) and ``stack.env`` read from a
temporary state directory, so a developer's own environment or stack cannot change a result.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.config import ConfigError, Settings
from pipeline.config.show import REFERENCE_PATH, reference
from pipeline.config.sources import REMOVED, read, variables

ROOT = Path(__file__).resolve().parents[2]


def from_env(env: dict[str, str]) -> Settings:
    return Settings.from_env(env, stack_file=False)


@pytest.mark.parametrize(
    ("variable", "value", "why"),
    [
        ("NPCFLOW_EVENT_LOOP", "trio", "input should be 'uvloop' or 'asyncio'"),
        ("NPCFLOW_MAX_PENDING", "0", "must be between 1 and"),
        ("NPCFLOW_MAX_PENDING", "lots", "not an integer"),
        ("NPCFLOW_SESSION_TIMEOUT_S", "-5", "must be more than 0"),
        ("NPCFLOW_METRICS_PORT", "99999", "must be between 0 and 65535"),
        ("NPCFLOW_MCP_PORT", "-1", "must be between 0 and 65535"),
        ("NPCFLOW_KAFKA_NODES", "2", "input should be 1 or 3"),
        ("NPCFLOW_FALLBACK", "maybe", "use 1 or 0"),
        ("NPCFLOW_GOLD_REFRESH_HZ", "nan", "must be between 0.1 and 10"),
        ("NPCFLOW_OPENAI_API", "stream", "input should be 'chat' or 'completions'"),
        ("NPCFLOW_TOOL_BUDGET_FRACTION", "1.5", "must be between 0 and 1"),
        ("NPCFLOW_TENANT_WEIGHTS", "gs-a=0", "write tenant=weight pairs"),
        ("NPCFLOW_RESULT_CACHE", "platinum", "input should be 'gold', 'silver' or 'bronze'"),
        ("NPCFLOW_TOPIC_PREFIX", "has space.", "should match pattern"),
    ],
)
def test_a_bad_value_is_refused_naming_the_variable(variable: str, value: str, why: str) -> None:
    with pytest.raises(ConfigError) as raised:
        from_env({variable: value})
    message = str(raised.value)
    assert message.startswith(f"{variable}={value!r}: "), message
    assert why in message
    assert "\n" not in message


def test_a_bad_value_from_stack_env_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "stack.env").write_text("NPCFLOW_MAX_PENDING=0\n")
    with pytest.raises(
        ConfigError, match=f"NPCFLOW_MAX_PENDING='0' \\(in {re.escape(str(tmp_path))}/stack.env\\)"
    ):
        Settings.from_env({"NPCFLOW_STATE_DIR": str(tmp_path)})


def test_zero_ports_mean_a_free_port_and_are_kept() -> None:
    settings = from_env({"NPCFLOW_MCP_PORT": "0", "NPCFLOW_METRICS_PORT": "0"})
    assert settings.mcp_server.port == 0
    assert settings.process.metrics_port == 0


def test_choices_take_any_case_and_lists_take_commas() -> None:
    settings = from_env(
        {
            "NPCFLOW_EVENT_LOOP": "AsyncIO",
            "NPCFLOW_KAFKA_SECURITY_PROTOCOL": "sasl_plaintext",
            "NPCFLOW_KAFKA_SASL_USERNAME": "u",
            "NPCFLOW_KAFKA_SASL_PASSWORD": "p",
            "NPCFLOW_METRICS_TARGETS": "a:1, b:2",
            "NPCFLOW_RESULT_CACHE": "gold",
            "NPCFLOW_KAFKA_NODES": "3",
            "NPCFLOW_ENGINE_SILVER": "openai",
        }
    )
    assert settings.process.event_loop == "asyncio"
    assert settings.kafka.security.protocol == "SASL_PLAINTEXT"
    assert settings.observability.metrics_targets == ("a:1", "b:2")
    assert settings.result_cache.tiers == ("gold",)
    assert settings.embedded_kafka_nodes == 3
    assert settings.engines.spec_for("silver") == "openai" and settings.engines.spec_for("gold") == "embedded"


def test_the_defaults_are_the_declared_ones() -> None:
    settings = from_env({"NPCFLOW_TOPIC_PREFIX": "", "NPCFLOW_MAX_PENDING": "  "})
    assert settings == Settings()
    assert settings.kafka.fetch_max_wait_ms == 500
    assert settings.kafka.session_timeout_s == 6.0
    assert settings.worker.max_pending == 1024
    assert settings.worker.in_flight_for("gold") == 16 and settings.worker.in_flight_for("bronze") == 4
    assert settings.mcp_server.port == 8765
    assert settings.process.event_loop == "uvloop" and settings.process.metrics_port is None
    assert settings.resilience.fallback is True and settings.resilience.tenant_weights == {}
    assert settings.result_cache.tiers == ("silver", "gold")
    assert settings.state_dir == Path(".npcflow").resolve()


def test_every_variable_is_declared_once_with_help() -> None:
    declared = list(variables())
    names = [var.name for var in declared]
    assert len(names) == len(set(names)), "a variable declared twice"
    assert all(name.startswith("NPCFLOW_") for name in names)
    assert [var.name for var in declared if not var.field.description] == []


def test_a_removed_variable_says_what_replaced_it() -> None:
    (name,) = REMOVED
    with pytest.raises(ConfigError, match=f"{name} is gone: .*NPCFLOW_GOLD_REFRESH_HZ"):
        from_env({name: "500"})


def test_copies_are_validated() -> None:
    settings = Settings()
    assert settings.with_(topic_prefix="t.").topic_prefix == "t."
    assert settings.kafka.with_(session_timeout_s=2).session_timeout_s == 2.0
    with pytest.raises(ValueError, match="greater than 0"):
        settings.kafka.with_(session_timeout_s=-1)


def test_the_environment_wins_over_stack_env_and_sources_are_reported(tmp_path: Path) -> None:
    stack_env = tmp_path / "stack.env"
    stack_env.write_text(
        "# written by stack up\nNPCFLOW_KAFKA_BOOTSTRAP=k:1\nNPCFLOW_REDIS_URL=redis://r:2\n"
    )
    reading = read({"NPCFLOW_STATE_DIR": str(tmp_path), "NPCFLOW_REDIS_URL": "redis://mine:3"})
    assert reading.settings.kafka_bootstrap == "k:1"
    assert reading.settings.redis_url == "redis://mine:3"
    assert reading.origin("NPCFLOW_KAFKA_BOOTSTRAP") == str(stack_env)
    assert reading.origin("NPCFLOW_REDIS_URL") == "environment"
    assert reading.origin("NPCFLOW_MAX_PENDING") == "default"
    assert read({"NPCFLOW_STATE_DIR": str(tmp_path)}, stack_file=False).settings.kafka_bootstrap is None


def test_config_show_prints_every_value_and_its_source(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "stack.env").write_text("NPCFLOW_KAFKA_BOOTSTRAP=k:1\n")
    monkeypatch.setenv("NPCFLOW_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("NPCFLOW_MAX_PENDING", "64")
    monkeypatch.setenv("NPCFLOW_KAFKA_SASL_PASSWORD", "s3cret")
    result = CliRunner().invoke(main, ["config", "show", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["variable"]: row for row in json.loads(result.output)}
    assert set(rows) == {var.name for var in variables()}
    assert rows["NPCFLOW_MAX_PENDING"] | {"help": ""} == {
        "variable": "NPCFLOW_MAX_PENDING",
        "setting": "worker.max_pending",
        "value": 64,
        "source": "environment",
        "default": "1024",
        "help": "",
    }
    assert rows["NPCFLOW_KAFKA_BOOTSTRAP"]["source"] == str(tmp_path / "stack.env")
    assert rows["NPCFLOW_KAFKA_BOOTSTRAP"]["value"] == "k:1"
    assert rows["NPCFLOW_FETCH_MAX_WAIT_MS"]["source"] == "default"
    assert rows["NPCFLOW_KAFKA_SASL_PASSWORD"]["value"] == "***"

    text = CliRunner().invoke(main, ["config", "show"])
    assert text.exit_code == 0 and "s3cret" not in text.output
    assert re.search(r"^NPCFLOW_MAX_PENDING=64 +environment$", text.output, re.M)
    assert re.search(
        rf"^NPCFLOW_KAFKA_BOOTSTRAP=k:1 +{re.escape(str(tmp_path))}/stack.env$", text.output, re.M
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["run", "worker", "--help"],
        ["topics", "create", "--help"],
        ["stack", "up", "--help"],
        ["config", "docs"],
    ],
)
def test_help_works_whatever_an_unrelated_variable_holds(
    monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    monkeypatch.setenv("NPCFLOW_EVENT_LOOP", "trio")
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 0, result.output
    assert "NPCFLOW_EVENT_LOOP" not in result.output or argv == ["config", "docs"]


def test_schema_export_works_whatever_an_unrelated_variable_holds(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NPCFLOW_MAX_PENDING", "0")
    result = CliRunner().invoke(main, ["schema", "export", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "asyncapi.yaml").exists()
    # ... while a command that uses the settings refuses the value in one line.
    refused = CliRunner().invoke(main, ["topics", "list"])
    assert refused.exit_code == 1
    assert refused.output.strip().splitlines() == [
        "Error: NPCFLOW_MAX_PENDING='0': must be between 1 and 1000000; default 1024"
    ]


def test_a_bad_log_level_is_refused() -> None:
    result = CliRunner().invoke(main, ["--log-level", "loud", "topics", "list"])
    assert result.exit_code == 2
    assert "'loud' is not one of 'debug', 'info', 'warning', 'error'" in result.output


def test_docs_settings_md_is_generated_from_the_declarations() -> None:
    assert (ROOT / REFERENCE_PATH).read_text() == reference(), (
        f"{REFERENCE_PATH} is stale: run `npcflow config docs -o {REFERENCE_PATH}`"
    )


def test_every_npcflow_variable_named_in_code_and_deployments_is_declared() -> None:
    """A typo in a test's, a launcher's or a manifest's variable would otherwise be silently ignored."""
    declared = {var.name for var in variables()} | set(REMOVED)
    not_settings = {"NPCFLOW_IMAGE", "NPCFLOW_IMAGES"}  # compose.yaml's image tag, test_deploy's regex
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    unknown: dict[str, str] = {}
    for name in tracked.stdout.split():
        if not name.endswith((".py", ".yaml", ".yml", ".env", ".toml", ".sh")):
            continue
        path = ROOT / name
        if not path.is_file():
            continue
        for variable in re.findall(
            r"(?<![A-Za-z0-9_])NPCFLOW_[A-Z0-9_]*[A-Z0-9]", path.read_text(errors="replace")
        ):
            if variable not in declared | not_settings:
                unknown.setdefault(variable, name)
    assert unknown == {}
