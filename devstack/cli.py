"""``npcflow stack`` and ``npcflow demo``: the embedded stack from a terminal, a Makefile or CI.

``stack up`` in the foreground is for a demo in one terminal (Ctrl-C takes everything down);
``stack up --detach`` + ``stack down`` is for scripts that run other commands in between;
``stack check`` is the one-line smoke test that the bundled binaries work on this machine;
``demo`` runs the whole pipeline on a stack of its own. :mod:`pipeline.cli` registers both
lazily, and passes the :class:`~pipeline.config.Settings` it read as the click context object.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import click

from devstack.endpoints import SERVICES, STACK_ENV_FILE, StackEndpoints
from devstack.errors import StackError
from devstack.game_server import DEFAULT_ACTIVE
from devstack.kafka_dist import broker_identity
from devstack.kafka_launcher import release_storage, storage_link
from devstack.probes import probe_all
from devstack.stack import EmbeddedStack
from devstack.supervise import LOG_DIR, stop_from_pidfile
from pipeline.config import Settings
from pipeline.config.commands import load_settings, pass_settings

log = logging.getLogger("npcflow.stack")


class _Interrupted(BaseException):
    """SIGTERM/SIGHUP turned into an exception so ``finally`` blocks stop the children."""


def _setup_logging(verbose: bool, default_level: int) -> None:
    """Only when nobody configured logging yet (the main ``npcflow`` group may have)."""
    if logging.getLogger().handlers:
        return
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    log.setLevel(logging.DEBUG if verbose else default_level)


@contextlib.contextmanager
def _on_signals(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    signums = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, handler) for signum in signums}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _raise_interrupted(signum: int, _frame: FrameType | None) -> None:
    raise _Interrupted(signal.Signals(signum).name)


def _echo_endpoints(endpoints: StackEndpoints, stack: EmbeddedStack) -> None:
    for key, value in endpoints.as_env().items():
        click.echo(f"{key}={value}")
    given = [name for name in SERVICES if name not in stack.started]
    click.echo(f"# env file: {stack.state_dir / STACK_ENV_FILE}", err=True)
    click.echo(f"# logs: {stack.state_dir / LOG_DIR}", err=True)
    click.echo(
        f"# started: {', '.join(stack.started) or 'none'}; from environment: {', '.join(given) or 'none'}",
        err=True,
    )


@click.group("stack", help="Run the embedded Kafka/PostgreSQL/Redis/S3/OpenSearch stack on 127.0.0.1.")
def stack() -> None:
    """Group for the embedded-stack commands."""


@stack.command("up", short_help="Start the stack and write stack.env (Ctrl-C stops it).")
@click.option(
    "--detach",
    "-d",
    is_flag=True,
    help="Return once everything answers; services keep running until `npcflow stack down`.",
)
@click.option(
    "--brokers",
    type=click.Choice(["1", "3"]),
    default=None,
    help="Kafka brokers to start: 1, or 3 for a replicated cluster (fault tests) "
    "[default: NPCFLOW_KAFKA_NODES or 1].",
)
@click.option("--verbose", "-v", is_flag=True, help="Debug logging on stderr.")
@pass_settings
def up(settings: Settings, detach: bool, brokers: str | None, verbose: bool) -> None:
    """Start every service not given by an NPCFLOW_* variable, probe all, write stack.env.

    In the foreground (default) it waits for Ctrl-C or SIGTERM and then stops everything it
    started; the services also die if this process is killed. Endpoints are printed as
    NPCFLOW_*=... lines and written to <state dir>/stack.env for the other npcflow commands.
    """
    _setup_logging(verbose, logging.INFO)
    # Only the environment gives services (never a stale stack.env): EmbeddedStack's own reading.
    own = Settings.from_env(stack_file=False)
    if brokers is not None:
        own = own.with_(embedded_kafka_nodes=int(brokers))
    embedded = EmbeddedStack(settings.state_dir, settings=own, detach=detach)
    stop_requested = threading.Event()
    starting = threading.Event()
    starting.set()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()
        if starting.is_set():
            _raise_interrupted(signum, frame)  # unwinds start(), which stops what it started

    failures: list[str] = []
    # One handler for the whole command, so no signal can slip in between startup and the wait.
    with _on_signals(on_signal):
        try:
            endpoints = embedded.start()
        except StackError as exc:
            raise click.ClickException(str(exc)) from exc
        except (_Interrupted, KeyboardInterrupt):
            click.echo("interrupted during startup; everything started was stopped", err=True)
            sys.exit(130)
        finally:
            starting.clear()
        _echo_endpoints(endpoints, embedded)
        if detach:
            click.echo(
                f"# running detached; stop with `npcflow stack down` (state dir {embedded.state_dir})",
                err=True,
            )
            return
        click.echo("# press Ctrl-C to stop", err=True)
        try:
            while not stop_requested.wait(0.5):
                failures = embedded.poll()
                if failures:
                    break
        finally:
            embedded.stop()
    if failures:
        raise click.ClickException("a service stopped on its own: " + "; ".join(failures))
    click.echo("# stopped", err=True)


def _stop_detached(state_dir: Path) -> list[str]:
    """Stop what the pid file in ``state_dir`` lists, then give back its brokers' storage."""
    stopped = stop_from_pidfile(state_dir)
    release_storage(state_dir)  # a link into memory: rmtree of the state dir would only unlink it
    return stopped


@stack.command("down", short_help="Stop what `stack up --detach` started.")
@click.option("--verbose", "-v", is_flag=True, help="Debug logging on stderr.")
@pass_settings
def down(settings: Settings, verbose: bool) -> None:
    """Stop the services `npcflow stack up --detach` started (by the pids it recorded).

    Removes stack.pids, stack.env and the brokers' logs. Harmless when nothing is running;
    processes whose pid now belongs to another program are left alone.
    """
    _setup_logging(verbose, logging.WARNING)
    state = settings.state_dir
    try:
        stopped = _stop_detached(state)
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc
    if stopped:
        click.echo(f"stopped {', '.join(stopped)}")
    else:
        click.echo(f"nothing to stop: no running embedded stack in {state}")


@stack.command("check", short_help="Start, probe and stop the whole stack; report each service.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON line instead of a table.")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds each service may take to answer.")
@click.option("--verbose", "-v", is_flag=True, help="Debug logging on stderr.")
@pass_settings
def check(settings: Settings, as_json: bool, timeout: float, verbose: bool) -> None:
    """Start the whole stack, probe each service on its own protocol, stop it, report.

    A service given by its NPCFLOW_* variable is probed, not started. Uses <state dir>/check
    so a stack from `up --detach` is left untouched; its logs stay there for a look after a
    failure. Exits non-zero unless every service is ok.
    """
    _setup_logging(verbose, logging.WARNING)
    began = time.monotonic()
    check_dir: Path = settings.state_dir / "check"
    _stop_detached(check_dir)
    shutil.rmtree(check_dir, ignore_errors=True)
    embedded = EmbeddedStack(check_dir, startup_timeout=timeout, external_timeout=timeout)
    broker: dict[str, str | float] = {}
    try:
        with _on_signals(_raise_interrupted):
            try:
                endpoints = embedded.start()
                results = probe_all(endpoints, timeout=timeout)
                broker = broker_identity(started="kafka" in embedded.started)
                if "kafka" in embedded.ready_s:
                    broker["broker_start_s"] = embedded.ready_s["kafka"]
                    broker["broker_storage"] = "memory" if storage_link(check_dir).is_symlink() else "disk"
            except StackError as exc:
                results = exc.results or dict.fromkeys(SERVICES, str(exc))
            finally:
                embedded.stop()
    except (_Interrupted, KeyboardInterrupt):
        click.echo("interrupted; everything started was stopped", err=True)
        sys.exit(130)
    report: dict[str, str | float] = {name: results.get(name, "not checked") for name in SERVICES}
    report |= broker
    report["seconds"] = round(time.monotonic() - began, 2)
    healthy = all(results.get(name) == "ok" for name in SERVICES)
    if as_json:
        click.echo(json.dumps(report))
    else:
        for name in SERVICES:
            click.echo(f"{name:<11} {report[name]}")
        for key, value in broker.items():
            click.echo(f"{key:<15} {value}")
        click.echo(f"{'all ok' if healthy else 'FAILED'} in {report['seconds']} s")
    if not healthy:
        sys.exit(1)


@click.command("demo")
@click.option("--duration", default=60.0, show_default=True, help="Seconds of simulated traffic.")
@click.option(
    "--rate", default=None, type=float, help="Requests per second (default: what the engine sustains)."
)
@click.option("--npcs", default=300, show_default=True, help="Simulated NPCs.")
@click.option(
    "--active",
    default=DEFAULT_ACTIVE,
    show_default=True,
    help="NPCs kept active (watched): Gold re-thinks them at 1-2 Hz and realtime requests go to them.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON summary line instead of the live table."
)
@click.option(
    "--engines",
    default=None,
    metavar="TIER=SPEC,...",
    help="Engines per tier, e.g. gold=embedded,silver=openai,bronze=sagemaker "
    "(default: NPCFLOW_ENGINE_<TIER>, NPCFLOW_ENGINE, embedded).",
)
@click.pass_context
def demo(
    ctx: click.Context,
    duration: float,
    rate: float | None,
    npcs: int,
    active: int,
    as_json: bool,
    engines: str | None,
) -> None:
    """Start the embedded stack, the router and three tier workers, and simulate a game server."""
    from devstack.demo import run_demo, with_engines

    settings = with_engines(load_settings(ctx), engines)
    summary = run_demo(settings, duration=duration, rate=rate, npcs=npcs, as_json=as_json, active=active)
    if as_json:
        click.echo(json.dumps(summary))
    ok = summary["lost"] == 0 and summary["sent"] == summary["replied"]
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    stack()
