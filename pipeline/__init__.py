"""npcflow: a Kafka-native, multi-tier LLM inference pipeline for game NPCs."""

__version__ = "0.1.0"
