"""A one-line progress bar on stderr, for terminals only (off with --quiet or when piped)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    def __init__(self, enabled: bool, stream: TextIO = sys.stderr, width: int = 30) -> None:
        self.stream = stream
        self.enabled = enabled and stream.isatty()
        self.width = width
        self._started = time.monotonic()
        self._last = 0.0

    def update(self, fraction: float | None, events: int) -> None:
        """Redraw at most five times a second; ``fraction`` None while the position is unknown."""
        now = time.monotonic()
        if not self.enabled or now - self._last < 0.2:
            return
        self._last = now
        rate = events / max(now - self._started, 1e-6)
        if fraction is None:
            bar, pct = "?" * self.width, "  ?%"
        else:
            fraction = min(max(fraction, 0.0), 1.0)
            filled = int(fraction * self.width)
            bar, pct = "#" * filled + "." * (self.width - filled), f"{fraction * 100:3.0f}%"
        self.stream.write(f"\r[{bar}] {pct} {events:,} events {rate:,.0f}/s ")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
