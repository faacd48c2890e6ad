"""What a reply costs, from a pricing file: GPU-seconds for Gold/Silver, instance-seconds for Bronze.

Every reply carries its cost (``Reply.cost_usd``, set by :func:`workers.replies.build_reply`);
answers from a cache cost 0 and count what the engine would have charged as saved. The prices
are in ``pricing.yaml`` next to this module (``NPCFLOW_PRICING_FILE`` replaces it); the
formulas are in that file's header.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from pipeline.config import ObservabilitySettings
from topics.errors import UserFacingError

BILLINGS = ("gpu", "sagemaker")
#: Replies answered without an engine call: cost 0, the engine's price saved.
CACHED = frozenset({"cache", "default_intent", "result_cache"})


class PricingError(UserFacingError, ValueError):
    """The pricing file is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class TierPrice:
    billing: str
    instance: str
    usd_per_hour: float
    #: Requests one instance serves at once: its hour is shared among them.
    concurrency: int
    #: What an engine call of this tier takes, for the savings of a cached answer.
    reference_engine_ms: float

    def usd_for(self, engine_ms: float) -> float:
        """The instance time ``engine_ms`` held, at this tier's rate (GPU- or instance-seconds)."""
        return round(max(0.0, engine_ms) / 1000.0 * self.usd_per_hour / 3600.0 / self.concurrency, 12)


@dataclass(frozen=True)
class Pricing:
    tiers: dict[str, TierPrice]
    source: str = "pipeline/observability/pricing.yaml"

    @classmethod
    def load(cls, path: str | Path | None = None) -> Pricing:
        """``path`` (``NPCFLOW_PRICING_FILE``), else the packaged prices; read once per process."""
        return _load(str(path) if path is not None else None)

    @classmethod
    def from_settings(cls, settings: ObservabilitySettings) -> Pricing:
        return cls.load(settings.pricing_file)

    @classmethod
    def from_dict(cls, data: object, source: str) -> Pricing:
        try:
            tiers = {
                str(name): TierPrice(
                    billing=str(spec["billing"]),
                    instance=str(spec.get("instance", "")),
                    usd_per_hour=float(spec["usd_per_hour"]),
                    concurrency=int(spec.get("concurrency", 1)),
                    reference_engine_ms=float(spec.get("reference_engine_ms", 0.0)),
                )
                for name, spec in data["tiers"].items()  # type: ignore[index]
            }
        except KeyError as exc:
            raise PricingError(f"{source}: missing key {exc}") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise PricingError(f"{source}: {exc}") from None
        for name, price in tiers.items():
            if price.billing not in BILLINGS:
                raise PricingError(f"{source}: tiers.{name}.billing {price.billing!r}: use gpu or sagemaker")
            if price.usd_per_hour < 0 or price.concurrency < 1 or price.reference_engine_ms < 0:
                raise PricingError(
                    f"{source}: tiers.{name}: usd_per_hour and reference_engine_ms must be ≥ 0, "
                    "concurrency ≥ 1"
                )
        missing = {"gold", "silver", "bronze"} - set(tiers)
        if missing:
            raise PricingError(f"{source}: tiers missing: {sorted(missing)}")
        return cls(tiers, source)

    def reply_cost(self, tier: str, served_by: str, engine_ms: float) -> float:
        """The reply's cost: 0 unless an engine answered; then its time at ``tier``'s rate."""
        if served_by != "engine":
            return 0.0
        return self.tiers[tier].usd_for(engine_ms)

    def saved(self, tier: str, served_by: str) -> float:
        """What a cached answer saved (its tier's reference engine call); 0 for anything else."""
        if served_by not in CACHED:
            return 0.0
        price = self.tiers[tier]
        return price.usd_for(price.reference_engine_ms)


@functools.cache
def _load(path: str | None) -> Pricing:
    if path is None:
        text = resources.files("pipeline.observability").joinpath("pricing.yaml").read_text()
        return Pricing.from_dict(yaml.safe_load(text), "pipeline/observability/pricing.yaml")
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise PricingError(f"cannot read pricing file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PricingError(f"{path}: not YAML: {exc}") from None
    return Pricing.from_dict(data, path)
