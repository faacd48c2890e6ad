"""Fakes for unit tests: lists standing in for Kafka topics (no broker)."""

from __future__ import annotations

Record = tuple[bytes, bytes, list | None]


class Topics:
    """What a router produced, per topic: ``produce`` and ``record`` have the router's callable shapes."""

    def __init__(self) -> None:
        self.records: dict[str, list[Record]] = {}

    async def produce(self, topic: str, key: bytes, value: bytes, headers: list | None) -> None:
        self.records.setdefault(topic, []).append((key, value, headers))

    async def record(self, topic: str, key: bytes, value: bytes) -> None:
        await self.produce(topic, key, value, None)

    def get(self, topic: str) -> list[Record]:
        return self.records.get(topic, [])
