"""The routing logic without faust or a broker: lists stand in for the topics it writes."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest

from pipeline.router.logic import Outcome, Router, Source
from tests.examples import INVALID_JSON_BODIES, INVALID_RAW_BODIES, encode, with_
from tests.unit.fakes import Topics
from topics.headers import DEADLINE_HEADER, TIER_HEADER
from topics.policy import RoutingPolicy
from topics.rejections import DeadLetter
from topics.schemas import RoutingDecision

NOW_MS = 1_790_000_000_100
SOURCE = Source("p.npc.requests", 3, 41)


@pytest.fixture
def topics() -> Topics:
    return Topics()


@pytest.fixture
def router(topics: Topics) -> Router:
    return Router(RoutingPolicy.load(), topics.produce, topics.record, prefix="p.", clock=lambda: NOW_MS)


async def test_a_valid_request_goes_to_its_tier_with_the_original_bytes_and_a_deadline(
    router: Router, topics: Topics
) -> None:
    raw = encode(with_(sla="realtime", max_tokens=8, tools=[], latency_budget_ms=16, reply_topic=None))
    assert await router.route(raw, SOURCE) is Outcome.ROUTED
    [(key, value, headers)] = topics.records["p.npc.requests.gold"]
    assert key == b"npc-blacksmith-7" and value == raw
    header = dict(headers or [])
    assert int(header[DEADLINE_HEADER]) == 1_790_000_000_000 + 16
    assert header[TIER_HEADER] == b"gold"
    [(_, decision_bytes, _)] = topics.records["p.npc.routing"]
    decision = RoutingDecision.model_validate_json(decision_bytes)
    assert decision.tier == "gold" and decision.request_id == "req-0001"
    assert router.stats.routed["gold"] == 1 and "p.npc.requests.dlq" not in topics.records


async def test_a_contradictory_request_is_demoted_and_the_decision_says_why(
    router: Router, topics: Topics
) -> None:
    raw = encode(with_(sla="realtime", max_tokens=500, tools=[], reply_topic=None))
    assert await router.route(raw, SOURCE) is Outcome.ROUTED
    assert "p.npc.requests.bronze" in topics.records
    decision = RoutingDecision.model_validate_json(topics.records["p.npc.routing"][0][1])
    assert "demoted to bronze" in decision.reason


@pytest.mark.parametrize(
    ("name", "body", "field", "rule"), INVALID_JSON_BODIES, ids=[b[0] for b in INVALID_JSON_BODIES]
)
async def test_invalid_requests_are_dead_lettered_with_field_and_rule(
    router: Router, topics: Topics, name: str, body: dict, field: str, rule: str
) -> None:
    raw = encode(body)
    assert await router.route(raw, SOURCE) is Outcome.DEAD_LETTERED
    [(key, value, _)] = topics.records["p.npc.requests.dlq"]
    letter = json.loads(value)
    assert key == SOURCE.topic.encode()
    assert field in letter["reason"] and rule in letter["reason"], letter["reason"]
    assert (letter["source_topic"], letter["source_partition"], letter["source_offset"]) == (
        SOURCE.topic,
        3,
        41,
    )
    assert not any(t.startswith("p.npc.requests.") and t != "p.npc.requests.dlq" for t in topics.records)


@pytest.mark.parametrize(("name", "raw", "words"), INVALID_RAW_BODIES, ids=[b[0] for b in INVALID_RAW_BODIES])
async def test_unparseable_bytes_are_dead_lettered_with_the_original(
    router: Router, topics: Topics, name: str, raw: bytes, words: str
) -> None:
    assert await router.route(raw, SOURCE) is Outcome.DEAD_LETTERED
    letter = DeadLetter.model_validate_json(topics.records["p.npc.requests.dlq"][0][1])
    assert words in letter.reason


@pytest.mark.parametrize("reply_topic", ["npc.replies", "p.npc.routing", "p.npc.requests.gold", "other"])
async def test_a_reply_topic_outside_the_reply_family_is_dead_lettered(
    router: Router, topics: Topics, reply_topic: str
) -> None:
    assert await router.route(encode(with_(reply_topic=reply_topic)), SOURCE) is Outcome.DEAD_LETTERED
    assert "reply_topic" in json.loads(topics.records["p.npc.requests.dlq"][0][1])["reason"]


async def test_the_prefixed_reply_family_is_accepted(router: Router, topics: Topics) -> None:
    assert await router.route(encode(with_(reply_topic="p.npc.replies.gs-eu-1")), SOURCE) is Outcome.ROUTED


async def test_a_request_no_tier_can_serve_is_dead_lettered_as_unroutable(topics: Topics) -> None:
    policy = RoutingPolicy.load()
    small = RoutingPolicy.from_dict(
        {
            "slas": {
                s.value: {"tier": t.value, "max_budget_ms": policy.sla_max_budget_ms[s]}
                for s, t in policy.sla_tiers.items()
            },
            "tiers": {
                t.value: {"max_tokens": 10, "tools": True, "default_budget_ms": 100, "usd_per_1k_tokens": 0.0}
                for t in policy.tiers
            },
        }
    )
    router = Router(small, topics.produce, topics.record, prefix="p.")
    assert (
        await router.route(encode(with_(max_tokens=500, reply_topic=None)), SOURCE) is Outcome.DEAD_LETTERED
    )
    assert "unroutable" in json.loads(topics.records["p.npc.requests.dlq"][0][1])["reason"]


async def test_a_bug_in_routing_dead_letters_the_event_instead_of_raising(topics: Topics) -> None:
    class BrokenPolicy(RoutingPolicy):
        def route(self, *args: object, **kwargs: object):  # type: ignore[no-untyped-def,override]
            raise KeyError("boom")

    base = RoutingPolicy.load()
    broken = BrokenPolicy(**{f.name: getattr(base, f.name) for f in fields(base)})
    router = Router(broken, topics.produce, topics.record, prefix="p.")
    assert await router.route(encode(with_(reply_topic=None)), SOURCE) is Outcome.DEAD_LETTERED
    assert "router error: KeyError" in json.loads(topics.records["p.npc.requests.dlq"][0][1])["reason"]
