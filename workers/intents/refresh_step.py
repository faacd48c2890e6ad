"""Gold's refresh as a serving step of its own: engine → the NPC's new intent; never a reply.

A refresh job exists to renew an intent the router answers from (docs/architecture.md, "Gold's
two paths"): the active refresher's calls (:mod:`workers.intents.active_refresh`) and any record on
the Gold topic carrying the refresh header. It shares the tier's engine (wrappers included: Gold's
substitute serves it with Silver's engine while Gold's is down) and :class:`~workers.serving.Serving`'s
stats, and it ends in a :class:`~workers.intents.writer.Refreshed` outcome: an intent to publish,
or none with the reason. The worker loop hands it the refresh jobs; :meth:`Serving.serve
<workers.serving.Serving.serve>` only ever replies.
"""

from __future__ import annotations

import logging
import time

from pipeline.observability import metrics
from topics.catalogue import Tier
from workers.engines.base import CallContext, Engine, EngineError
from workers.intents.writer import IntentRefresh, Refreshed
from workers.resilience.admission import LoadShedder
from workers.serving import Job, ServingStats

log = logging.getLogger("npcflow.intents")

#: Every refresh call says so: the result cache must not answer it with an old intent.
REFRESH_CALL = CallContext(refresh=True)


class RefreshServing:
    """Serves a tier's refresh jobs with its engine; ``intents`` writes what the engine said."""

    def __init__(
        self, tier: Tier, engine: Engine, intents: IntentRefresh, stats: ServingStats, shedder: LoadShedder
    ) -> None:
        self.tier = tier
        self.engine = engine
        self.intents = intents
        self.stats = stats
        self.shedder = shedder

    def shed(self, job: Job, expected_wait_ms: float, service_ms: float | None) -> Refreshed | None:
        """Skip a refresh the queue says would finish past its deadline (None: queue it).

        Nothing to forward and no one to reply to: the router answered already, and the intent
        ages to the default until the NPC's next refresh.
        """
        if self.shedder.verdict(job.deadline_ms, time.time() * 1000, expected_wait_ms, service_ms) is None:
            return None
        metrics.SHED.labels(self.tier.value, "skipped").inc()
        return Refreshed(job.request, None, "shed")

    async def serve(self, job: Job) -> Refreshed:
        """Call the engine and write the intent; call it once an engine slot is the caller's.

        An engine error leaves the last intent in place: it ages out to the default, and the NPC's
        next refresh replaces it.
        """
        self.stats.engine_calls += 1
        if time.time() * 1000 > job.deadline_ms:
            return _done(Refreshed(job.request, None, "expired"))
        try:
            result = await self.engine.generate(job.request, job.deadline_ms, REFRESH_CALL)
        except EngineError as exc:
            log.info("refresh for %s failed: %s", job.request.npc_id, exc)
            return _done(Refreshed(job.request, None, "engine_error"))
        update = await self.intents.record(job.request, result, self.engine.name)
        return _done(Refreshed(job.request, update, "written" if update else "empty"))


def _done(outcome: Refreshed) -> Refreshed:
    metrics.INTENT_UPDATES.labels(outcome.reason).inc()
    return outcome
