"""The processes that serve: tier workers and their engines, the job collector, sinks, game state."""
