"""Typed reads of ``NPCFLOW_*`` values and of ``stack.env``; :mod:`pipeline.config` decides which.

A malformed value is one :class:`ConfigError` naming the variable, never a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from topics.errors import UserFacingError


class ConfigError(UserFacingError, RuntimeError):
    """A setting is missing or malformed; the message says which and how to fix it."""


def load_env_file(path: Path) -> dict[str, str]:
    """Read a ``KEY=VALUE`` file such as ``.npcflow/stack.env``; skips blanks and ``#`` comments."""
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip()
    return values


class EnvReader:
    """Typed reads of one environment mapping; a malformed value is a :class:`ConfigError`."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def str(self, name: str, default: str | None = None) -> str | None:
        value = self.env.get(name, "").strip()
        return value or default

    def int(self, name: str, default: int | None) -> int | None:
        value = self.str(name)
        if value is None:
            return default
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{name}={value!r} is not an integer") from None

    def float(self, name: str, default: float) -> float:
        value = self.str(name)
        if value is None:
            return default
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{name}={value!r} is not a number") from None
