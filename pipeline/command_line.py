"""How the ``npcflow`` command line behaves, whatever its commands are.

- The root options every invocation has: ``-h``, ``--log-level``, ``--debug`` and ``--version``.
- Commands whose package the product need not load (the dev stack, replay) are imported only
  when invoked or listed by ``--help``. A missing package becomes a stand-in command that
  says what to install, not an ImportError.
- Every error becomes one line (pipeline/failures.py names what to change), unless ``--debug``.

Which commands there are is pipeline/cli.py's business (the composition root); this module
imports no layer above ``pipeline``.
"""

from __future__ import annotations

import functools
import importlib
import logging
import sys
from collections.abc import Callable, Mapping

import click

from pipeline.config import Settings
from topics.errors import UserFacingError

#: A lazily imported command: (module, attribute, help shown while the module is not imported).
LazyCommand = tuple[str, str, str]


class CommandLine(click.Group):
    """A group with lazy commands, whose errors a user can fix are one clear line, not a traceback.

    ``lazy`` maps a command name to where it lives; ``missing`` maps each of those modules to
    what to install when it cannot be imported.
    """

    def __init__(
        self,
        *args: object,
        lazy: Mapping[str, LazyCommand],
        missing: Mapping[str, str],
        **kwargs: object,
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lazy = dict(lazy)
        self.missing = dict(missing)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.lazy:
            return super().get_command(ctx, cmd_name)
        module_name, attr, help_text = self.lazy[cmd_name]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            return _missing_extra(cmd_name, help_text, f"{self.missing[module_name]} ({exc})")
        command: click.Command = getattr(module, attr)
        return command

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except UserFacingError as exc:
            if ctx.params.get("debug"):
                raise
            raise click.ClickException(str(exc)) from exc
        except Exception as exc:
            if ctx.params.get("debug"):
                raise
            raise click.ClickException(one_line(exc, ctx.obj)) from exc


def root_group(
    lazy: Mapping[str, LazyCommand], missing: Mapping[str, str]
) -> Callable[[Callable[[click.Context], None]], CommandLine]:
    """Make a function the root command, with the root options around it.

    The function gets the context and runs before any subcommand, after logging is set up;
    its docstring is the root ``--help``. ``--debug`` is read by :meth:`CommandLine.invoke`.
    """

    def decorate(body: Callable[[click.Context], None]) -> CommandLine:
        @click.group(
            cls=CommandLine,
            lazy=lazy,
            missing=missing,
            context_settings={"help_option_names": ["-h", "--help"]},
        )
        @click.option(
            "--log-level",
            type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
            default="info",
            show_default=True,
        )
        @click.option("--debug", is_flag=True, help="Print the traceback of an error instead of one line.")
        @click.version_option(package_name="npcflow", message="npcflow %(version)s")
        @click.pass_context
        @functools.wraps(body)
        def root(ctx: click.Context, log_level: str, debug: bool) -> None:
            _setup_logging(log_level)  # settings are read by the commands that use them (pass_settings)
            body(ctx)

        group: CommandLine = root  # type: ignore[assignment]
        return group

    return decorate


def one_line(exc: Exception, settings: Settings | None) -> str:
    """A failure a user can fix names what to change; anything else is a bug, and says how to see it."""
    from pipeline.failures import explain

    line = explain(exc, settings if isinstance(settings, Settings) else None)
    if line is not None:
        return line
    return f"{type(exc).__name__}: {exc} (a bug in npcflow: run `npcflow --debug …` for the traceback)"


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _missing_extra(name: str, help_text: str, hint: str) -> click.Command:
    """A stand-in command that says what to install, instead of an ImportError traceback."""

    def fail() -> None:
        raise click.ClickException(f"`npcflow {name}` needs {hint}")

    settings = {"ignore_unknown_options": True, "allow_extra_args": True}
    return click.Command(name, callback=fail, help=help_text, context_settings=settings)
