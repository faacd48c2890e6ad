"""What each serving outcome asks the worker to produce, and on which producer."""

from __future__ import annotations

import json

from tests.unit.test_serving import POLICY, PREFIX, Record, request, routed, serving
from topics.catalogue import Tier
from topics.schemas import Output, Reply
from workers.engines.base import EngineError
from workers.engines.scripted import ScriptedEngine, ScriptedProfile
from workers.intents.writer import IntentRefresh
from workers.resilience.fallback import FallbackStep, Forwarded
from workers.serving import DeadLettered, Replied, Serving


async def test_a_reply_goes_out_at_once_and_its_output_and_intent_batch() -> None:
    gold = Serving(
        Tier.GOLD,
        ScriptedEngine(ScriptedProfile(tokens_per_reply=3)),
        POLICY,
        prefix=PREFIX,
        intents=IntentRefresh(None, prefix=PREFIX),
    )
    req = request()
    # As a game server might write it: other spacing, keys in another order.
    sent = json.dumps(dict(reversed(json.loads(req.to_bytes()).items())), indent=1).encode()
    outcome = await gold.handle(Record(sent, routed(req).headers))
    assert isinstance(outcome, Replied)
    reply, output, intent = outcome.records()
    assert sent in output.value  # the request as it came in, not serialised again
    assert (reply.topic, reply.urgent, reply.key) == (f"{PREFIX}npc.replies", True, req.request_id.encode())
    assert Reply.from_bytes(reply.value) == outcome.reply
    # The output rides in the reply's produce request; the intent waits for the linger.
    assert (output.topic, output.urgent, output.key) == (f"{PREFIX}npc.outputs", True, reply.key)
    # The output embeds the reply's own bytes, and still reads as the same output.
    assert reply.value in output.value
    assert Output.from_bytes(output.value) == outcome.output
    assert json.loads(output.value) == json.loads(outcome.output.to_bytes())
    assert (intent.topic, intent.urgent, intent.key) == (f"{PREFIX}npc.intents", False, b"npc-1")


async def test_a_dead_letter_batches_with_the_outputs() -> None:
    outcome = await serving(ScriptedEngine(ScriptedProfile())).handle(Record(b"{not json"))
    assert isinstance(outcome, DeadLettered)
    [letter] = outcome.records()
    assert letter.topic == f"{PREFIX}npc.requests.dlq" and not letter.urgent
    assert b"invalid request" in letter.value


class Down(ScriptedEngine):
    async def generate(self, request, deadline_ms, call):  # type: ignore[no-untyped-def]
        raise EngineError("engine down")


async def test_a_forwarded_request_goes_out_at_once_and_its_routing_record_batches() -> None:
    silver = Serving(
        Tier.SILVER,
        Down(ScriptedProfile()),
        POLICY,
        prefix=PREFIX,
        fallback=FallbackStep(Tier.SILVER, POLICY, PREFIX),
    )
    req = request()
    outcome = await silver.handle(routed(req))
    assert isinstance(outcome, Forwarded)
    forwarded, decision = outcome.records()
    assert forwarded.topic == f"{PREFIX}npc.requests.bronze" and forwarded.urgent
    assert forwarded.headers == outcome.headers and forwarded.value == req.to_bytes()
    assert decision.topic == f"{PREFIX}npc.routing" and not decision.urgent
    assert decision.key == req.request_id.encode()
