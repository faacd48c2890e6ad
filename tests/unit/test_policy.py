"""Routing policy: SLA classification, tier choice, contradictions and deadlines."""

from __future__ import annotations

import pytest

from tests.examples import VALID_REQUEST
from topics.catalogue import Tier
from topics.fields import Sla
from topics.policy import PolicyError, RoutingPolicy, Unroutable
from topics.schemas import Request

POLICY = RoutingPolicy.load()
T0 = VALID_REQUEST["created_at_ms"]


def req(**kw: object) -> Request:
    base = {k: v for k, v in VALID_REQUEST.items() if k not in ("sla", "latency_budget_ms", "tools")}
    base.update(kw)
    return Request.model_validate(base, strict=False)


@pytest.mark.parametrize(
    ("kwargs", "tier", "deadline"),
    [
        ({"sla": "realtime", "max_tokens": 8, "latency_budget_ms": 16}, Tier.GOLD, T0 + 16),
        ({"sla": "realtime", "max_tokens": 4}, Tier.GOLD, T0 + 16),
        ({"latency_budget_ms": 10, "max_tokens": 8}, Tier.GOLD, T0 + 10),
        ({"sla": "interactive", "max_tokens": 200}, Tier.SILVER, T0 + 250),
        ({"latency_budget_ms": 120, "max_tokens": 50}, Tier.SILVER, T0 + 120),
        ({"max_tokens": 50}, Tier.SILVER, T0 + 250),
        ({"tools": ["rag_search"], "max_tokens": 50}, Tier.SILVER, T0 + 250),
        ({"sla": "async", "max_tokens": 2000}, Tier.BRONZE, T0 + 60000),
        ({"latency_budget_ms": 5000, "max_tokens": 400}, Tier.BRONZE, T0 + 5000),
    ],
)
def test_route_by_sla_budget_and_size(kwargs: dict, tier: Tier, deadline: int) -> None:
    route = POLICY.route(req(**kwargs))
    assert route.tier == tier
    assert route.deadline_ms == deadline
    assert route.contradiction is None


def test_realtime_with_500_tokens_is_demoted_to_bronze_with_a_bronze_budget() -> None:
    route = POLICY.route(req(sla="realtime", max_tokens=500, latency_budget_ms=16))
    assert route.tier == Tier.BRONZE and route.sla == Sla.REALTIME
    assert "max_tokens=500 > gold limit 8" in (route.contradiction or "")
    assert route.deadline_ms == T0 + 60000
    assert "demoted to bronze" in route.reason


def test_realtime_with_tools_goes_to_silver() -> None:
    route = POLICY.route(req(sla="realtime", max_tokens=8, tools=["game_state_query"]))
    assert route.tier == Tier.SILVER
    assert "tools" in (route.contradiction or "")


def test_unroutable_when_no_tier_is_big_enough() -> None:
    small = RoutingPolicy.from_dict(
        {
            "slas": {
                "realtime": {"tier": "gold", "max_budget_ms": 16},
                "interactive": {"tier": "silver", "max_budget_ms": 250},
                "async": {"tier": "bronze", "max_budget_ms": 10**6},
            },
            "tiers": {
                t: {"max_tokens": 10, "tools": True, "default_budget_ms": 100}
                for t in ("gold", "silver", "bronze")
            },
        }
    )
    with pytest.raises(Unroutable, match="no slower tier"):
        small.route(req(max_tokens=500))


def test_malformed_policy_names_the_problem() -> None:
    with pytest.raises(PolicyError, match="missing key 'tiers'"):
        RoutingPolicy.from_dict({"slas": {}})


def test_cost_scales_with_tokens() -> None:
    assert POLICY.cost_usd(Tier.GOLD, 1000) == pytest.approx(0.0006)
    assert POLICY.cost_usd(Tier.BRONZE, 0) == 0
