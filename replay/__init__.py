"""Analysts replay recorded traffic: what-if reports, a sandbox re-run, exports for notebooks.

Every request, routing decision and reply is on Kafka (``npc.requests``, ``npc.routing``,
``npc.outputs``). :mod:`replay.window` reads a time (or offset) window of those topics,
:mod:`replay.join` joins them by request id with bounded state, and the consumers of the joined
rows are small: :mod:`replay.report` (re-route offline through a candidate policy),
:mod:`replay.sandbox` (re-publish into a sandbox prefix) and :mod:`replay.export` (Parquet/CSV).
See docs/architecture.md, "Replay for analysts".
"""
