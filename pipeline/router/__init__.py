"""The router: routing logic (no faust) and the faust app that wires it.

The routing policy it applies is the shared contract in :mod:`topics.policy`. Import
:mod:`pipeline.router.logic` without pulling in faust; only :mod:`pipeline.router.app` needs it.
"""
