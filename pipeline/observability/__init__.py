"""Metrics (and, as they land, cost reports and health) shared by every npcflow process."""
