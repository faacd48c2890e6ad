"""What goes wrong while bringing the embedded stack up or down."""

from __future__ import annotations

from collections.abc import Mapping

from topics.errors import UserFacingError


class StackError(UserFacingError, RuntimeError):
    """The stack could not be brought up; ``results`` holds "ok" or the error for each service."""

    def __init__(self, message: str, results: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.results: dict[str, str] = dict(results or {})
