"""``npcflow config show|docs``, and :func:`pass_settings`: settings read when a command needs them.

Commands take their settings through :func:`pass_settings` rather than from the group: the
environment is read only once a command runs, so ``--help``, ``schema export`` and ``config docs``
work whatever an unrelated variable holds.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from pipeline import eventloop
from pipeline.config.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


def load_settings(ctx: click.Context) -> Settings:
    """This invocation's settings, read from the environment on first use and kept on the root context.

    The event loop is installed here too, as it is named by the settings and needed only by
    commands that read them.
    """
    root = ctx.find_root()
    if not isinstance(root.obj, Settings):
        root.obj = Settings.from_env()
        eventloop.install(root.obj.process.event_loop)
    settings: Settings = root.obj
    return settings


def pass_settings(command: F) -> F:
    """Like ``click.pass_obj``, with the settings read on first use (:func:`load_settings`)."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        return command(load_settings(click.get_current_context()), *args, **kwargs)

    return run  # type: ignore[return-value]


@click.group("config")
def config() -> None:
    """Every NPCFLOW_* setting: effective values and their sources, and the reference."""


@config.command("show")
@click.option(
    "--json", "as_json", is_flag=True, help="A JSON list: variable, setting, value, source, default, help."
)
def config_show(as_json: bool) -> None:
    """Print every setting's effective value and where it came from (default, environment, stack.env)."""
    from pipeline.config.show import effective, table
    from pipeline.config.sources import read

    reading = read()
    click.echo(json.dumps(effective(reading), indent=2) if as_json else table(reading))


@config.command("docs")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the reference here (e.g. docs/settings.md) instead of printing it.",
)
def config_docs(output: Path | None) -> None:
    """Print (or write) the settings reference, docs/settings.md, from the declarations."""
    from pipeline.config.show import reference

    text = reference()
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        output.write_text(text)
    except OSError as exc:
        raise click.ClickException(f"cannot write {output}: {exc.strerror or exc}") from None
    click.echo(str(output))
