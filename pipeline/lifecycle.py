"""Explicit start/stop for every long-lived object, usable as ``async with`` (aiokafka's style)."""

from __future__ import annotations

import warnings
from typing import Self


class Lifecycle:
    """Subclasses implement ``_start`` and ``_stop``; nothing connects in a constructor.

    ``start`` and ``stop`` are the public face: ``stop`` is safe to call twice (and before
    ``start``), and an object that was started but never stopped warns when it is collected, as
    aiokafka's clients do, so a leaked connection shows up in the test output.
    """

    _lifecycle_state: str = "new"

    async def _start(self) -> None:
        raise NotImplementedError

    async def _stop(self) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        if self._lifecycle_state == "started":
            return
        self._lifecycle_state = "started"
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self._lifecycle_state != "started":
            return
        self._lifecycle_state = "stopped"
        await self._stop()

    @property
    def started(self) -> bool:
        return self._lifecycle_state == "started"

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def __del__(self) -> None:
        if self._lifecycle_state == "started":
            message = f"{type(self).__name__} was started and never stopped"
            warnings.warn(message, ResourceWarning, stacklevel=1)
