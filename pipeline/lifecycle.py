"""Explicit start/stop for every long-lived object, usable as ``async with`` (aiokafka's style)."""

from __future__ import annotations

from typing import Self


class Lifecycle:
    """Subclasses implement ``start`` and ``stop``; nothing connects in a constructor."""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
