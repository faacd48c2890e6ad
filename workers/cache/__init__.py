"""Caches the workers keep: each NPC's intent (Redis + ``npc.intents``, kept fresh for the active
set) and finished results (Redis, answered from before the engine by :mod:`workers.cache.result_step`)."""

from workers.cache.intents import IntentRefresh, IntentUpdate, Refreshed

__all__ = ["IntentRefresh", "IntentUpdate", "Refreshed"]
