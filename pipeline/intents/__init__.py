"""NPC intents, the shared half: what game servers and the router read, and where intents are kept.

An intent is an NPC's current short action; Gold answers from it (docs/architecture.md, "Gold's
two paths"). The capability lives in two packages because the import direction is
``topics`` ← ``pipeline`` ← ``workers``: the SDK and the router may not import the workers, and
the refresh step calls an engine, which only the workers have.

- ``pipeline/intents/`` (this package): the near cache game servers and the router read
  (:mod:`~pipeline.intents.near_cache`: ``IntentCache``, ``SeenIntent``), the default intent per
  archetype (:mod:`~pipeline.intents.defaults` + ``default_intents.yaml``), the active set's
  leases on ``npc.active`` (:mod:`~pipeline.intents.active`), and the Redis intent store
  (:mod:`~pipeline.intents.store`), which needs nothing above ``topics``.
- ``workers/intents/``: Gold's refresh side, which turns engine results into intents (the writer,
  the refresh schedule, the active refresher, the refresh serving step).

Game-server code writes ``from pipeline.intents import IntentCache``. The store is not exported
here: its writers import :mod:`pipeline.intents.store`, so the SDK does not load the Redis client.
"""

from pipeline.intents.active import GENERIC_PROMPT, ActiveAnnouncer, Announcement
from pipeline.intents.defaults import ARCHETYPE_KEY, BUILTIN_DEFAULT_INTENT, DefaultIntents, archetype_of
from pipeline.intents.near_cache import GAME_ENGINE, IntentCache, SeenIntent

__all__ = [
    "ARCHETYPE_KEY",
    "BUILTIN_DEFAULT_INTENT",
    "GAME_ENGINE",
    "GENERIC_PROMPT",
    "ActiveAnnouncer",
    "Announcement",
    "DefaultIntents",
    "IntentCache",
    "SeenIntent",
    "archetype_of",
]
