"""Tier workers, inference engines and (later) sinks."""
