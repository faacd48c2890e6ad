"""Circuit breakers shared by every process: the router reads them, the tier workers trip them.

Here, below both, so neither imports the other: :mod:`pipeline.breakers.state` (the rules and
where the state lives) and :mod:`pipeline.breakers.board` (one process's breakers over a store).
"""
