"""The one ``--since``/``--until`` grammar of ``cost report`` and ``replay`` (pipeline/since.py)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from pipeline.since import SinceError, parse_moment, window_s

NOW = 1_717_000_000_000


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("1h", 3600),
        ("1h30m", 5400),
        ("1h 30m", 5400),
        ("2d", 172800),
        ("1w", 604800),
        ("0.5h", 1800),
        ("500ms", 0.5),
    ],
)
def test_ages_count_back_from_now(text: str, seconds: float) -> None:
    assert window_s(text, NOW) == seconds
    assert parse_moment(text, NOW) == NOW - seconds * 1000


def test_times_parse_as_epoch_ms_or_iso_utc_unless_zoned() -> None:
    assert parse_moment("1717000000000") == NOW
    assert parse_moment("2024-05-29T16:26:40Z") == NOW
    assert parse_moment("2024-05-29T16:26:40") == NOW  # naive means UTC
    assert parse_moment("2024-05-29T18:26:40+02:00") == NOW
    assert window_s("2024-05-29T16:16:40Z", NOW) == 600


@pytest.mark.parametrize("text", ["", "1", "h", "1x", "1h-", "-1h", "0s", "yesterday"])
def test_anything_else_is_one_line_naming_the_option_and_the_forms(text: str) -> None:
    with pytest.raises(SinceError, match="--until") as caught:
        parse_moment(text, NOW, option="--until")
    assert "\n" not in str(caught.value)


def test_a_moment_in_the_future_opens_no_window() -> None:
    with pytest.raises(SinceError, match="not in the past"):
        window_s("2030-01-01T00:00:00Z", NOW)


@pytest.mark.parametrize("command", [["cost", "report"], ["replay", "--report"]])
def test_cost_report_and_replay_accept_the_same_compound_age(command: list[str]) -> None:
    """Both commands get past ``--since 1h30m`` and fail later, on what is not configured."""
    from pipeline.cli import main

    env = {"NPCFLOW_KAFKA_BOOTSTRAP": "", "NPCFLOW_DATABASE_URL": "", "NPCFLOW_STATE_DIR": "/nonexistent"}
    ok = CliRunner().invoke(main, [*command, "--since", "1h30m"], env=env)
    bad = CliRunner().invoke(main, [*command, "--since", "1h30"], env=env)
    assert "--since" not in ok.output, ok.output
    assert ok.exit_code != 0  # nothing configured: a clear error after the window was read
    assert "--since '1h30'" in bad.output, bad.output
