"""One HTTP port per process: ``/metrics`` (Prometheus), ``/healthz`` (alive), ``/readyz`` (serving).

Every npcflow process (router, tier workers, collector, sinks, MCP server) calls
:func:`serve` once at its entry point — through :func:`pipeline.observability.metrics.serve_metrics`,
which the existing processes already call — and :func:`pipeline.readiness.mark_ready` once its
consumer group gave it partitions. So Kubernetes probes and Prometheus scrape the same port.

Port 0 binds a free port: a supervisor that starts many processes on one host (the demo,
``npcflow validate --embedded``, tests) reads the bound port from the process's ready file
instead of handing out ports that may be taken by the time the child binds them.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

StartResponse = Callable[[str, list[tuple[str, str]]], object]


class _State:
    """What /readyz answers; a process has one (set from the thread that learns it, read by HTTP's)."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.detail = ""
        self.port: int | None = None
        self.started_at = time.time()


STATE = _State()


def mark_ready(detail: str = "") -> None:
    """The process serves (its consumer group assigned it partitions): /readyz answers 200."""
    STATE.detail = detail
    STATE.ready.set()


def mark_not_ready(detail: str = "stopping") -> None:
    """Stopping or lost its partitions: /readyz answers 503 so a balancer stops sending work."""
    STATE.detail = detail
    STATE.ready.clear()


def bound_port() -> int | None:
    """The port :func:`serve` bound (None: not serving), for the ready file."""
    return STATE.port


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """A scrape every few seconds is not worth a log line."""


def _json(start: StartResponse, status: str, body: dict[str, object]) -> Iterable[bytes]:
    start(status, [("Content-Type", "application/json")])
    return [json.dumps(body).encode()]


def _app() -> Callable[[dict, StartResponse], Iterable[bytes]]:
    metrics_app = make_wsgi_app()

    def app(environ: dict, start: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/healthz":
            # Alive: the process answers HTTP. A hung event loop is caught by readiness and lag.
            return _json(start, "200 OK", {"status": "ok", "pid": os.getpid()})
        if path == "/readyz":
            if STATE.ready.is_set():
                return _json(start, "200 OK", {"status": "ready", "detail": STATE.detail})
            return _json(start, "503 Service Unavailable", {"status": "not ready", "detail": STATE.detail})
        return metrics_app(environ, start)

    return app


def serve(port: int | None, addr: str = "127.0.0.1") -> int | None:
    """Serve the three paths on ``addr:port`` in a daemon thread; None serves nothing.

    Returns the bound port (the free one chosen for port 0). Calling it again returns the port
    already bound: one server per process.
    """
    if port is None:
        return None
    if STATE.port is not None:
        return STATE.port
    try:
        httpd = make_server(addr, port, _app(), ThreadingWSGIServer, handler_class=_Quiet)
    except (OverflowError, OSError) as exc:  # a port out of range, taken, or a host not ours
        from topics.errors import UserFacingError

        raise UserFacingError(
            f"cannot serve metrics on {addr}:{port} (NPCFLOW_METRICS_HOST, NPCFLOW_METRICS_PORT): "
            f"{(getattr(exc, 'strerror', None) or str(exc)).rstrip('.')}; "
            "give a free port 1-65535, or 0 for any free port"
        ) from exc
    STATE.port = int(httpd.server_port)
    thread = threading.Thread(target=httpd.serve_forever, name="npcflow-metrics", daemon=True)
    thread.start()
    return STATE.port
