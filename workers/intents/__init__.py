"""NPC intents, Gold's refresh side: engine results become intents, and active NPCs are kept fresh.

The capability lives in two packages because the import direction is ``topics`` ← ``pipeline``
← ``workers``: what game servers and the router use cannot import the workers, and the refresh
calls an engine, which only the workers have.

- ``pipeline/intents/``: the shared half — the near cache (``IntentCache``), the default intents,
  the active set's leases on ``npc.active``, the Redis intent store.
- ``workers/intents/`` (this package): :mod:`~workers.intents.writer` (``IntentRefresh``: an
  engine result → an intent in Redis and an ``IntentUpdate`` for ``npc.intents``; ``Refreshed``,
  a refresh's outcome), :mod:`~workers.intents.schedule` (``RefreshSchedule``: when each active
  NPC is refreshed, no I/O), :mod:`~workers.intents.active_refresh` (``ActiveRefresher``: follows
  ``npc.active`` in each Gold worker and runs the schedule), :mod:`~workers.intents.refresh_step`
  (``RefreshServing``: the serving step a refresh goes through instead of a reply).

Only the writer's names are exported here: :mod:`workers.serving` imports them, and the refresh
step and the refresher import :mod:`workers.serving`, so exporting those from here would be a cycle.
"""

from workers.intents.writer import IntentRefresh, IntentUpdate, Refreshed

__all__ = ["IntentRefresh", "IntentUpdate", "Refreshed"]
