"""Where each setting's value comes from: the environment, then ``stack.env``, then its default.

This is the only product module that reads ``os.environ``. :func:`read` looks up every declared
variable (:func:`variables`) and remembers where each value came from, so ``npcflow config show``
can say it and a bad value's error can name its variable and its file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from pipeline.config.fields import ConfigError, allowed, shown_default
from pipeline.config.settings import Settings

#: The environment's name for where a value came from (``stack.env``'s is the file's path).
ENVIRONMENT = "environment"
DEFAULT = "default"
#: The file ``npcflow stack up --detach`` writes in the state directory.
STACK_ENV = "stack.env"
#: Variables that were removed: setting one is an error that says what replaced it.
REMOVED = {
    "NPCFLOW_INTENT_REFRESH_INTERVAL_MS": "active NPCs are refreshed at NPCFLOW_GOLD_REFRESH_HZ per "
    "second instead (500 ms was 2); unset it",
}
#: pydantic's error types for a number outside its range: said as the range, in words.
_OUT_OF_RANGE = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}
#: pydantic's parse errors, said plainly.
_PLAIN = {
    "int_parsing": "not an integer",
    "int_from_float": "not an integer",
    "float_parsing": "not a number",
    "bool_parsing": "use 1 or 0 (or true/false, yes/no, on/off)",
}


@dataclass(frozen=True)
class Variable:
    """One declared setting: its variable, where it sits in :class:`Settings`, its declaration."""

    name: str
    path: tuple[str, ...]
    field: FieldInfo

    @property
    def group(self) -> str:
        return self.path[0] if len(self.path) > 1 else "endpoints and paths"

    @property
    def secret(self) -> bool:
        extra = self.field.json_schema_extra
        return bool(isinstance(extra, dict) and extra.get("secret"))

    def value_in(self, settings: Settings) -> Any:
        value: Any = settings
        for attr in self.path:
            value = getattr(value, attr)
        return value


def variables(model: type[BaseModel] = Settings, path: tuple[str, ...] = ()) -> Iterator[Variable]:
    """Every declared variable, in declaration order (groups in the order :class:`Settings` lists them)."""
    for name, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            yield from variables(kind, (*path, name))
        elif isinstance(field.validation_alias, str):
            yield Variable(field.validation_alias, (*path, name), field)


def environ() -> dict[str, str]:
    """A copy of the process environment, for launchers that must pass it on to a child process."""
    return dict(os.environ)


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


@dataclass(frozen=True)
class Reading:
    """The settings read, and where each variable that was set came from."""

    settings: Settings
    #: Variable → ``environment`` or the path of ``stack.env``; a variable not here has its default.
    origins: Mapping[str, str]

    def origin(self, name: str) -> str:
        return self.origins.get(name, DEFAULT)


def read(env: Mapping[str, str] | None = None, *, stack_file: bool = True) -> Reading:
    """The settings from ``env`` (default: the process environment), then ``stack.env``.

    A value that is empty counts as unset. A bad value is one :class:`ConfigError` naming its
    variable (and its file, when it came from ``stack.env``).
    """
    env = os.environ if env is None else env
    declared = list(variables())
    raw: dict[str, str] = {}
    origins: dict[str, str] = {}
    for name in (*(var.name for var in declared), *REMOVED):
        value = (env.get(name) or "").strip()
        if value:
            raw[name], origins[name] = value, ENVIRONMENT
    if removed := [name for name in REMOVED if name in raw]:
        raise ConfigError("; ".join(f"{name} is gone: {REMOVED[name]}" for name in removed))
    if stack_file:
        state_dir = Path(raw.get("NPCFLOW_STATE_DIR", ".npcflow")).resolve()
        path = state_dir / STACK_ENV
        try:
            from_file = load_env_file(path) if path.exists() else {}
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from None
        for var in declared:
            if var.name not in raw and from_file.get(var.name):
                raw[var.name], origins[var.name] = from_file[var.name], str(path)
    values: dict[str, Any] = {}
    for var in declared:
        if var.name in raw:
            node = values
            for part in var.path[:-1]:
                node = node.setdefault(part, {})
            node[var.name] = raw[var.name]
    try:
        settings = Settings(**values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, raw, origins, declared)) from None
    return Reading(settings, origins)


def _describe(
    exc: ValidationError, raw: Mapping[str, str], origins: Mapping[str, str], declared: list[Variable]
) -> str:
    """One line per bad value, ``VARIABLE='value': why; default d``, naming stack.env if from there."""
    fields = {var.name: var.field for var in declared}
    lines: list[str] = []
    for error in exc.errors():
        why = str(error["msg"]).removeprefix("Value error, ")
        name = next((p for p in error["loc"] if isinstance(p, str) and p in fields), None)
        if name is None:  # a rule across several variables; its message names them
            lines.append(why)
            continue
        if error["type"] in _OUT_OF_RANGE:
            why = f"must be {allowed(fields[name])}"
        why = _PLAIN.get(error["type"], why)
        where = "" if origins.get(name) == ENVIRONMENT else f" (in {origins.get(name)})"
        default = shown_default(fields[name])
        hint = f"; default {default}" if default else ""
        lines.append(f"{name}={raw.get(name)!r}{where}: {why[:1].lower()}{why[1:]}{hint}")
    return "; ".join(lines)
