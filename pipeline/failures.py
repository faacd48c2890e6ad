"""Failures a user can cause, each said in one line that names what to change.

The ``npcflow`` command (pipeline/command_line.py) prints every error as one line unless ``--debug``
is given. This module knows the exceptions behind the failures a user can fix (an endpoint
that is down or refuses us, a path that cannot be written), and names the setting behind an
endpoint and where its value came from: the environment or ``.npcflow/stack.env`` (the file
``npcflow stack up --detach`` writes), because a stale ``stack.env`` left by a stopped stack is
the usual reason a broker "is down".
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from pipeline.config import Settings
from pipeline.config.sources import environ, load_env_file

#: ``scheme://user:secret@host`` → ``scheme://user:***@host``: an error line never shows a password.
_SECRET = re.compile(r"(://[^:/@\s]+):[^@/\s]+@")


@dataclass(frozen=True)
class Endpoint:
    """One configured service: its variable, what it is called in a sentence, its Settings field."""

    variable: str
    what: str
    field: str


KAFKA = Endpoint("NPCFLOW_KAFKA_BOOTSTRAP", "the Kafka broker", "kafka_bootstrap")
POSTGRES = Endpoint("NPCFLOW_DATABASE_URL", "PostgreSQL", "database_url")
REDIS = Endpoint("NPCFLOW_REDIS_URL", "Redis", "redis_url")
S3 = Endpoint("NPCFLOW_S3_ENDPOINT", "S3", "s3_endpoint")
OPENSEARCH = Endpoint("NPCFLOW_OPENSEARCH_URL", "OpenSearch", "opensearch_url")


def redact(text: str) -> str:
    return _SECRET.sub(r"\1:***@", text)


def origin(variable: str, value: str | None, settings: Settings) -> str:
    """Where ``value`` of ``variable`` came from, as a phrase: the environment or stack.env."""
    if value is None:
        return f"{variable} is not set"
    if environ().get(variable) == value:
        return f"{variable} from the environment"
    stack_env = settings.state_dir / "stack.env"
    try:
        if load_env_file(stack_env).get(variable) == value:
            return f"{variable} from {stack_env}"
    except OSError:
        pass
    return variable


def unreachable(endpoint: Endpoint, settings: Settings, reason: str) -> str:
    """``cannot reach the Kafka broker at H:P (NPCFLOW_KAFKA_BOOTSTRAP from the environment): …``."""
    value = getattr(settings, endpoint.field)
    where = origin(endpoint.variable, value, settings)
    shown = redact(value) if value else "(none)"
    return f"cannot reach {endpoint.what} at {shown} ({where}): {redact(reason)}"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, its causes and contexts, and the members of exception groups, outermost first."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen or len(seen) > 50:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _endpoint_of(exc: BaseException) -> Endpoint | None:
    """The service an exception is about, by the client library that raised it."""
    import aiokafka.errors as kafka_errors

    if isinstance(exc, kafka_errors.KafkaConnectionError | kafka_errors.NoBrokersAvailable):
        return KAFKA
    module = type(exc).__module__
    name = type(exc).__name__
    if module.startswith("psycopg") and name == "OperationalError":
        return POSTGRES
    if module.startswith("redis") and "ConnectionError" in name:
        return REDIS
    if module.startswith("botocore") and name in ("EndpointConnectionError", "ConnectTimeoutError"):
        return S3
    if module.startswith("opensearchpy") and name in ("ConnectionError", "ConnectionTimeout"):
        return OPENSEARCH
    return None


def _reason(exc: BaseException) -> str:
    if type(exc).__name__ == "KafkaConnectionError":
        # aiokafka's own text lists resolved socket addresses; the endpoint is named already.
        text = _first_line(exc)
        return text if "within" in text else "connection refused or no broker there"
    return _first_line(exc)


def explain(exc: BaseException, settings: Settings | None) -> str | None:
    """One line for a failure a user can fix, or None when ``exc`` is not one (a bug: say so)."""
    for current in _chain(exc):
        endpoint = _endpoint_of(current)
        if endpoint is not None and settings is not None:
            return unreachable(endpoint, settings, _reason(current))
    for current in _chain(exc):
        if isinstance(current, OSError) and current.filename is not None:
            return f"{current.filename}: {current.strerror or _first_line(current)}"
    return None
