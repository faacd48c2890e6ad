"""Default intents: what an NPC does while it has no fresh model intent, per archetype.

Kept apart from the near cache (:mod:`pipeline.intents.near_cache`) because it is configuration
(``NPCFLOW_DEFAULT_INTENTS_FILE``, the packaged ``default_intents.yaml`` next to this module),
read once per process. Where a request names its NPC's archetype (:data:`ARCHETYPE_KEY`) is
here too: the archetype exists to choose a default intent, and the refreshes the Gold workers
make say it the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from pipeline.config import ConfigError, IntentSettings
from topics.fields import MAX_INTENT_CHARS
from topics.schemas import Request

#: The intent when neither the file's ``default`` nor an archetype applies.
BUILTIN_DEFAULT_INTENT = "idle: stay where you are and watch the surroundings"
#: The request ``context`` key naming the NPC's archetype.
ARCHETYPE_KEY = "archetype"
#: The packaged defaults, a data file of this package (pyproject ``package-data``).
PACKAGED_FILE = "default_intents.yaml"


def archetype_of(request: Request) -> str | None:
    value = request.context.get(ARCHETYPE_KEY)
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class DefaultIntents:
    """The intent per archetype when an NPC has no fresh one; ``default`` for unknown archetypes."""

    default: str = BUILTIN_DEFAULT_INTENT
    archetypes: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path | None = None) -> DefaultIntents:
        """``path`` (``NPCFLOW_DEFAULT_INTENTS_FILE``), else the packaged ``default_intents.yaml``."""
        source = str(path or f"pipeline/intents/{PACKAGED_FILE}")
        packaged = resources.files("pipeline.intents").joinpath(PACKAGED_FILE)
        text = Path(path).read_text() if path else packaged.read_text()
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict) or not isinstance(data.get("archetypes", {}), dict):
            raise ConfigError(f"{source}: expected `default: <intent>` and `archetypes: {{name: intent}}`")
        archetypes = {str(k): str(v)[:MAX_INTENT_CHARS] for k, v in (data.get("archetypes") or {}).items()}
        default = str(data.get("default") or BUILTIN_DEFAULT_INTENT)[:MAX_INTENT_CHARS]
        return cls(default=default, archetypes=archetypes)

    @classmethod
    def from_settings(cls, settings: IntentSettings) -> DefaultIntents:
        return cls.load(settings.defaults_file)

    def for_archetype(self, archetype: str | None) -> str:
        return self.archetypes.get(archetype, self.default) if archetype else self.default
