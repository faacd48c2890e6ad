"""The one base class for errors a user can fix: the CLI prints their message, not a traceback."""

from __future__ import annotations


class UserFacingError(Exception):
    """Raised for configuration, reachability and setup problems; the message says what to do."""
