"""Prometheus rules, alerts, the Grafana dashboard and every reader of /metrics only name metrics
the processes export, in the units they export them.

promtool is not installable here, so the check is ours: every identifier in every expression must
be a family the code registers (``families.exported_names``, read from the live registry after
importing the code every process runs), a histogram's ``_bucket``/``_sum``/``_count`` of one, a
recording rule defined in ``rules.yml``, or Prometheus's own ``up``. Latency thresholds are the
routing policy's budgets in seconds; lag is summed over a group's members.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import yaml

import pipeline.router.logic  # noqa: F401 - registers the router's families
import workers.tier_worker  # noqa: F401 - registers the workers' families
from pipeline.observability.families import HOPS, exported_names
from topics.catalogue import Tier
from topics.policy import RoutingPolicy

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "infrastructure" / "prometheus"
DASHBOARD = ROOT / "infrastructure" / "grafana" / "npcflow.json"
#: Where metric names are read or documented outside the Prometheus rules and the dashboard.
READERS = (
    ROOT / "pipeline" / "observability" / "top.py",
    ROOT / "pipeline" / "observability" / "validate.py",
    ROOT / "pipeline" / "observability" / "cost_report.py",
    *sorted((ROOT / "benchmarks").glob("*.py")),
    ROOT / "README.md",
    ROOT / "docs" / "architecture.md",
)
#: Unit words Prometheus' naming conventions replace by a base unit (seconds, bytes).
NON_BASE_UNITS = {"ms", "millis", "milliseconds", "us", "microseconds", "minutes", "hours", "kb", "mb"}

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def metric_names(expr: str) -> set[str]:
    """Identifiers in a PromQL expression that name series (not functions, labels or keywords)."""
    text = re.sub(r'"[^"]*"', "", expr)  # strings (label values)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or match.group() in KEYWORDS:
            continue
        if re.fullmatch(r"\d+(e\d+)?", match.group()) or match.group() in ("e",):
            continue
        names.add(match.group())
    return names


def rule_groups(name: str) -> list[dict]:
    return yaml.safe_load((PROM / name).read_text())["groups"]


def recorded() -> set[str]:
    return {r["record"] for g in rule_groups("rules.yml") for r in g["rules"] if "record" in r}


def allowed(name: str, extra: set[str]) -> bool:
    exported = exported_names()
    base = next((name[: -len(s)] for s in HISTOGRAM_SUFFIXES if name.endswith(s)), name)
    return name in exported or base in exported or name in extra or name == "up"


def test_the_expression_parser_finds_series_and_skips_the_rest() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le) (rate(npcflow_reply_latency_seconds_bucket{tier="gold"}[1m])))'
    )
    assert metric_names(expr) == {"npcflow_reply_latency_seconds_bucket"}
    assert metric_names("gold_tier_latency_p95 > 16 and on(tier) up == 0") == {"gold_tier_latency_p95", "up"}


def test_the_seed_recording_rules_exist() -> None:
    assert {"gold_tier_latency_p95", "silver_tier_latency_p95", "bronze_tier_latency_p95"} <= recorded()


@pytest.mark.parametrize("file", ["rules.yml", "alerts.yml"])
def test_every_rule_names_exported_metrics(file: str) -> None:
    rules = [r for g in rule_groups(file) for r in g["rules"]]
    assert rules
    for rule in rules:
        unknown = {n for n in metric_names(str(rule["expr"])) if not allowed(n, recorded())}
        assert not unknown, f"{file}: {rule.get('record') or rule.get('alert')} names {unknown}"


def test_alerts_cover_sla_misses_breakers_and_lag() -> None:
    exprs = " ".join(str(r["expr"]) for g in rule_groups("alerts.yml") for r in g["rules"])
    for needed in ("npcflow_breaker_state", "npcflow_consumer_lag", "sla_miss", "_tier_latency_p95"):
        assert needed in exprs


def test_every_dashboard_panel_queries_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len(panels) >= 10
    titles = " ".join(p["title"] for p in panels).lower()
    for topic in ("p95 vs sla", "sla misses", "served_by", "fallbacks", "breaker", "cost", "cache hit"):
        assert topic in titles
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            unknown = {n for n in names if not allowed(n, recorded())}
            assert not unknown, f"panel {panel['title']!r} names {unknown}"


def test_metric_names_follow_prometheus_conventions() -> None:
    """Base units at the end of the name: every histogram is a duration in seconds, no family names
    milliseconds (or any other non-base unit) anywhere in its name."""
    from prometheus_client import REGISTRY

    names = exported_names()
    assert "npcflow_engine_seconds_saved_total" in names
    for name in names:
        assert not NON_BASE_UNITS & set(name.split("_")), f"{name}: use a base unit (seconds)"
    histograms = {
        f.name for f in REGISTRY.collect() if f.name.startswith("npcflow_") and f.type == "histogram"
    }
    assert len(histograms) >= 5
    for name in histograms:
        assert name.endswith("_seconds"), f"histogram {name} is not in seconds"


def test_every_reader_and_doc_names_exported_metrics() -> None:
    """``npcflow top``, validate, the cost report, the benchmarks and the docs scrape or cite
    families by name: a renamed family must be renamed there too."""
    exported = exported_names()
    for path in READERS:
        for name in set(re.findall(r"\bnpcflow_[a-z0-9_]*[a-z0-9]", path.read_text())):
            base = next((name[: -len(s)] for s in HISTOGRAM_SUFFIXES if name.endswith(s)), name)
            known = name in exported or base in exported or f"{name}_total" in exported
            assert known, f"{path.relative_to(ROOT)} names {name}, which no process exports"


def _observed_hops() -> set[str]:
    """The ``hop`` label of every ``observe_hop(tier, hop, ms)`` call in the product."""
    hops = set()
    for package in ("pipeline", "workers"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                func = getattr(node, "func", None)
                if (
                    isinstance(node, ast.Call)
                    and getattr(func, "attr", getattr(func, "id", None)) == "observe_hop"
                ):
                    hop = node.args[1]
                    assert isinstance(hop, ast.Constant), f"{path}: observe_hop's hop is not a literal"
                    hops.add(hop.value)
    return hops


def test_the_documented_hops_are_the_ones_observed() -> None:
    """HOPS is the documented order; the code observes exactly those hops, and the README and the
    recording rule list them in that order."""
    assert _observed_hops() == set(HOPS)
    readme = (ROOT / "README.md").read_text()
    assert f"{{hop={'|'.join(HOPS)}}}" in readme
    assert f"p95 per hop ({', '.join(HOPS)})" in (PROM / "rules.yml").read_text()


def _alert(name: str) -> dict:
    return next(r for g in rule_groups("alerts.yml") for r in g["rules"] if r.get("alert") == name)


def test_latency_alerts_are_the_policys_budgets_in_seconds() -> None:
    """The recording rules read the seconds histogram, so a threshold in ms would never fire."""
    policy = RoutingPolicy.load()
    for tier in Tier:
        alert = _alert(f"Npcflow{tier.value.title()}LatencyOverBudget")
        match = re.fullmatch(rf"{tier.value}_tier_latency_p95 > ([0-9.]+)", str(alert["expr"]).strip())
        assert match, alert["expr"]
        assert float(match.group(1)) == policy.tiers[tier].default_budget_ms / 1000


def _aggregate(expr: str, per_member: list[float]) -> tuple[float, float]:
    """``AGG by (group, topic) (npcflow_consumer_lag) > N`` over one group's members: (value, N)."""
    match = re.fullmatch(
        r"(sum|max|min|avg) by \(group, topic\) \(npcflow_consumer_lag\)(?: > (\d+))?", expr.strip()
    )
    assert match, f"lag is not aggregated per group and topic: {expr}"
    agg = {"sum": sum, "max": max, "min": min, "avg": lambda v: sum(v) / len(v)}[match.group(1)]
    return agg(per_member), float(match.group(2) or "nan")


def test_lag_is_summed_over_a_groups_members() -> None:
    """Each member exports the lag of the partitions it owns: three workers 600 behind each are a
    group 1,800 behind, which must trip the 1,000 alert (a ``max`` would show 600)."""
    value, threshold = _aggregate(str(_alert("NpcflowConsumerLag")["expr"]), [600, 600, 600])
    assert value == 1800 and value > threshold
    panel = next(p for p in json.loads(DASHBOARD.read_text())["panels"] if "lag" in p["title"].lower())
    value, _ = _aggregate(panel["targets"][0]["expr"], [600, 600, 600])
    assert value == 1800


def test_the_dashboard_datasource_is_a_template_variable() -> None:
    """No hard-coded datasource uid: the dashboard imports into any Grafana and asks which Prometheus."""
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        for holder in (panel, *panel["targets"]):
            assert holder["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]


def test_the_dashboards_budget_lines_are_the_policys_in_seconds() -> None:
    policy = RoutingPolicy.load()
    panels = {p["title"].split()[0].lower(): p for p in json.loads(DASHBOARD.read_text())["panels"]}
    for tier in Tier:
        panel = panels[tier.value]
        budget_s = policy.tiers[tier].default_budget_ms / 1000
        assert panel["fieldConfig"]["defaults"]["unit"] == "s"
        assert panel["fieldConfig"]["defaults"]["thresholds"]["steps"][-1]["value"] == budget_s
        assert any(t["expr"] == f"vector({budget_s:g})" for t in panel["targets"]), panel["title"]
