"""What can go wrong in a sink, named for where it went wrong."""

from __future__ import annotations

from topics.errors import UserFacingError


class SinkUnavailable(Exception):
    """The store cannot be reached right now: the runner retries the same batch with backoff, forever.

    Sinks raise it (or list the client's own connection errors in ``Sink.transient``) for failures
    that say nothing about the records, so a store that is down never sends good records to the
    dead-letter topic.
    """


class SinkSetupError(UserFacingError):
    """A sink cannot start: unknown name, store not configured, migrations not applied."""
