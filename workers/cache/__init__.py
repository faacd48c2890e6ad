"""Caches the workers keep: each NPC's intent (Redis + ``npc.intents``); the result cache joins here."""

from workers.cache.intents import IntentRefresh, IntentStore, IntentUpdate, Refreshed

__all__ = ["IntentRefresh", "IntentStore", "IntentUpdate", "Refreshed"]
