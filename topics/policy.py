"""The routing policy: SLA classification, tier choice, tier budgets and the fallback chain.

Loaded from YAML (``policy.yaml`` beside this module). Part of the shared contract because the
router, every tier worker and a replay all decide with it; kept free of Kafka so it can be
unit-tested and replayed over recorded traffic; the router only calls :meth:`RoutingPolicy.route`.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from topics.catalogue import Tier
from topics.errors import UserFacingError
from topics.fields import Sla
from topics.schemas import Request

#: Where a tier's request goes when the tier cannot answer in time (re-published by the worker,
#: or diverted by the router while the tier's breaker is open). Gold is not here: its in-time
#: answer is the intent, and its refresh falls back inside the worker.
FORWARD: dict[Tier, Tier] = {Tier.SILVER: Tier.BRONZE}
#: Whose engine serves a tier's work when its own is down (the Gold refresh's substitute).
SUBSTITUTE: dict[Tier, Tier] = {Tier.GOLD: Tier.SILVER}


class PolicyError(UserFacingError, ValueError):
    """The policy file is malformed; the message names the key."""


class Unroutable(ValueError):
    """No tier can serve the request (e.g. more tokens than any tier allows)."""


@dataclass(frozen=True)
class TierLimits:
    max_tokens: int
    tools: bool
    default_budget_ms: int
    usd_per_1k_tokens: float


@dataclass(frozen=True)
class Route:
    """Where a request goes and why; ``contradiction`` is set when the request asked for the impossible."""

    tier: Tier
    sla: Sla
    deadline_ms: int
    reason: str
    contradiction: str | None = None


@dataclass(frozen=True)
class RoutingPolicy:
    default_sla: Sla
    sla_tiers: dict[Sla, Tier]
    sla_max_budget_ms: dict[Sla, int]
    tiers: dict[Tier, TierLimits]

    @classmethod
    def load(cls, path: Path | str | None = None) -> RoutingPolicy:
        """Load ``path`` (``Settings.policy_file``), else the packaged default policy."""
        text = (
            Path(path).read_text() if path else resources.files("topics").joinpath("policy.yaml").read_text()
        )
        return cls.from_dict(yaml.safe_load(text), source=str(path or "topics/policy.yaml"))

    @classmethod
    def from_dict(cls, data: dict, source: str = "policy") -> RoutingPolicy:
        try:
            slas = {Sla(name): spec for name, spec in data["slas"].items()}
            tiers = {
                Tier(name): TierLimits(
                    max_tokens=int(spec["max_tokens"]),
                    tools=bool(spec["tools"]),
                    default_budget_ms=int(spec["default_budget_ms"]),
                    usd_per_1k_tokens=float(spec.get("usd_per_1k_tokens", 0.0)),
                )
                for name, spec in data["tiers"].items()
            }
            policy = cls(
                default_sla=Sla(data.get("default_sla", "interactive")),
                sla_tiers={sla: Tier(spec["tier"]) for sla, spec in slas.items()},
                sla_max_budget_ms={sla: int(spec["max_budget_ms"]) for sla, spec in slas.items()},
                tiers=tiers,
            )
        except KeyError as exc:
            raise PolicyError(f"{source}: missing key {exc}") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise PolicyError(f"{source}: {exc}") from None
        missing = set(Tier) - set(tiers)
        if missing:
            raise PolicyError(f"{source}: tiers missing: {sorted(t.value for t in missing)}")
        return policy

    def classify(self, request: Request) -> tuple[Sla, str]:
        """The SLA a request asks for, and how we know."""
        if request.sla is not None:
            return request.sla, f"sla={request.sla.value}"
        if request.latency_budget_ms is not None:
            for sla, ceiling in sorted(self.sla_max_budget_ms.items(), key=lambda kv: kv[1]):
                if request.latency_budget_ms <= ceiling:
                    return sla, f"budget {request.latency_budget_ms} ms ≤ {ceiling} ms"
            return Sla.ASYNC, f"budget {request.latency_budget_ms} ms exceeds every SLA"
        return self.default_sla, f"no sla or budget: default {self.default_sla.value}"

    @staticmethod
    def tier_inputs(request: Request) -> tuple[object, ...]:
        """The request fields :meth:`route` chooses the tier from (and finds a contradiction or an
        unroutable request in); the deadline and the reason's wording read more. Requests with equal
        inputs get the same tier, so a replay decides each once (``replay/report.py``): a new field
        read by :meth:`classify` or :meth:`_cannot_serve` belongs here too."""
        return (request.sla, request.latency_budget_ms, request.max_tokens, tuple(request.tools))

    def _cannot_serve(self, tier: Tier, request: Request) -> str | None:
        limits = self.tiers[tier]
        if request.max_tokens > limits.max_tokens:
            return f"max_tokens={request.max_tokens} > {tier.value} limit {limits.max_tokens}"
        if request.tools and not limits.tools:
            return f"tools {request.tools} not offered by {tier.value}"
        return None

    def route(self, request: Request, received_ms: int | None = None) -> Route:
        """Pick the tier and the absolute deadline; raises :class:`Unroutable` if nothing fits.

        The budget counts from ``created_at_ms``, but never from later than ``received_ms``: a game
        server whose clock runs ahead cannot buy its requests longer deadlines.
        """
        start_ms = request.created_at_ms if received_ms is None else min(request.created_at_ms, received_ms)
        sla, why = self.classify(request)
        wanted = self.sla_tiers[sla]
        order = list(Tier)
        problem = self._cannot_serve(wanted, request)
        if problem is None:
            budget = request.latency_budget_ms or self.tiers[wanted].default_budget_ms
            return Route(
                wanted, sla, start_ms + budget, f"{why} → {wanted.value}{self._budget_note(sla, request)}"
            )
        for tier in order[order.index(wanted) + 1 :]:
            if self._cannot_serve(tier, request) is None:
                budget = max(request.latency_budget_ms or 0, self.tiers[tier].default_budget_ms)
                contradiction = f"{why} asks {wanted.value}, but {problem}"
                return Route(
                    tier,
                    sla,
                    start_ms + budget,
                    f"{contradiction} → demoted to {tier.value} with a {budget} ms budget",
                    contradiction,
                )
        raise Unroutable(f"{why} asks {wanted.value}, but {problem}, and no slower tier can serve it")

    def _budget_note(self, sla: Sla, request: Request) -> str:
        """An explicit SLA picks the tier and the budget the deadline; say so when they disagree."""
        budget = request.latency_budget_ms
        if request.sla is None or budget is None:
            return ""
        ceiling = self.sla_max_budget_ms[sla]
        floor = max((c for c in self.sla_max_budget_ms.values() if c < ceiling), default=0)
        if budget > ceiling or budget <= floor:
            return f" (budget {budget} ms lies outside {sla.value}'s class; the deadline follows the budget)"
        return ""

    def next_deadline(self, tier: Tier, deadline_ms: int, now_ms: int) -> int:
        """The deadline a request gets on ``tier`` when it falls back there: its own, or the tier's
        budget from now if later."""
        return max(deadline_ms, now_ms + self.tiers[tier].default_budget_ms)

    def latest_deadline(self, route: Route) -> int:
        """The latest deadline a routed request can reach: each fallback along :data:`FORWARD`
        happens by the deadline it had at the latest, and gives at most the next tier's budget more.

        The SDK waits this long before it calls a request lost: a Silver request that fell back to
        Bronze is answered by Bronze's deadline, not Silver's.
        """
        tier, deadline_ms = route.tier, route.deadline_ms
        while tier in FORWARD:
            tier = FORWARD[tier]
            deadline_ms = self.next_deadline(tier, deadline_ms, deadline_ms)
        return deadline_ms

    def cost_usd(self, tier: Tier, tokens: int) -> float:
        return round(self.tiers[tier].usd_per_1k_tokens * tokens / 1000.0, 9)
