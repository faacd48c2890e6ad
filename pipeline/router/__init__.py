"""The router: routing logic (no faust), the routing policy, and the faust app that wires them.

Import :mod:`pipeline.router.logic` or :mod:`pipeline.router.policy` without pulling in faust;
only :mod:`pipeline.router.app` and :mod:`pipeline.router.transport` need it.
"""
