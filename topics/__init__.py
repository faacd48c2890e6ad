"""The topic catalogue and the event schemas: one definition each, exported for other languages."""
