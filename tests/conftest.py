"""Settings every test shares: no test may pick up a developer's own stack by accident."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
