"""The declarations as text: ``npcflow config show`` (effective values) and ``docs/settings.md``.

Both are rendered from :func:`pipeline.config.sources.variables`, so the reference cannot drift
from the code: a unit test fails when ``docs/settings.md`` differs from :func:`reference`.
"""

from __future__ import annotations

import re
from itertools import groupby
from typing import Any

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from pipeline.config.fields import allowed, render, shown_default
from pipeline.config.settings import Settings
from pipeline.config.sources import Reading, Variable, variables

#: Where ``npcflow config docs`` writes by default, relative to the repository root.
REFERENCE_PATH = "docs/settings.md"
SECRET = "***"


def _shown(var: Variable, value: Any) -> Any:
    return SECRET if var.secret and value else value


def effective(reading: Reading) -> list[dict[str, Any]]:
    """Every variable with its value, where the value came from, its default and its help."""
    return [
        {
            "variable": var.name,
            "setting": ".".join(var.path),
            "value": to_jsonable_python(_shown(var, var.value_in(reading.settings))),
            "source": reading.origin(var.name),
            "default": shown_default(var.field),
            "help": var.field.description or "",
        }
        for var in variables()
    ]


def table(reading: Reading) -> str:
    """``config show``: one line per variable (``NAME=value``, then its source), grouped by concept."""
    lines: list[str] = []
    for group, members in groupby(variables(), key=lambda v: v.group):
        lines.append(f"# {group}")
        for var in members:
            value = _shown(var, render(var.value_in(reading.settings)))
            lines.append(f"{var.name}={value}".ljust(56) + f"  {reading.origin(var.name)}")
    return "\n".join(lines)


def _group_title(path: tuple[str, ...]) -> str:
    """``engines.openai`` and the first line of its class's docstring."""
    model: type[BaseModel] = Settings
    for attr in path:
        kind = model.model_fields[attr].annotation
        assert isinstance(kind, type) and issubclass(kind, BaseModel)
        model = kind
    if not path:
        return "## Endpoints and paths"
    summary = re.sub(r":\w+:`", "`", (model.__doc__ or "").strip().splitlines()[0]).replace("``", "`")
    return f"## `{'.'.join(path)}`: {summary}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|") or "—"


def reference() -> str:
    """``docs/settings.md``: every variable, its default, what it accepts and what it does."""
    lines = [
        "# Settings",
        "",
        "<!-- Generated from pipeline/config/ by `npcflow config docs`; do not edit by hand. -->",
        "",
        "Every setting is an `NPCFLOW_*` environment variable, declared once in `pipeline/config/`",
        "(its type, default, range and help together). A process reads the environment first, then",
        "`<NPCFLOW_STATE_DIR>/stack.env` (written by `npcflow stack up --detach`) for what the",
        "environment does not set; an empty value counts as unset. A bad value stops the process",
        "with one line naming the variable. `npcflow config show [--json]` prints every effective",
        "value and where it came from.",
        "",
        "Booleans take `1`/`0` (or `true`/`false`, `yes`/`no`, `on`/`off`); lists are comma-separated.",
    ]
    for path, members in groupby(variables(), key=lambda v: v.path[:-1]):
        lines += [
            "",
            _group_title(path),
            "",
            "| Variable | Default | Accepts | Meaning |",
            "|---|---|---|---|",
        ]
        for var in members:
            accepts = allowed(var.field)
            lines.append(
                f"| `{var.name}` | {_cell(shown_default(var.field))} | {_cell(accepts)} "
                f"| {_cell(var.field.description or '')} |"
            )
    return "\n".join(lines) + "\n"
