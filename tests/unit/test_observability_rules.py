"""Prometheus rules, alerts and the Grafana dashboard only name metrics the processes export.

promtool is not installable here, so the check is ours: every identifier in every expression must
be a family the code registers (``families.exported_names``, read from the live registry after
importing the code every process runs), a histogram's ``_bucket``/``_sum``/``_count`` of one, a
recording rule defined in ``rules.yml``, or Prometheus's own ``up``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

import pipeline.router.logic  # noqa: F401 - registers the router's families
import workers.tier_worker  # noqa: F401 - registers the workers' families
from pipeline.observability.families import HOPS, exported_names

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "infrastructure" / "prometheus"
DASHBOARD = ROOT / "infrastructure" / "grafana" / "npcflow.json"

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
    expr = 'histogram_quantile(0.95, sum by (le) (rate(npcflow_reply_latency_ms_bucket{tier="gold"}[1m])))'
    assert metric_names(expr) == {"npcflow_reply_latency_ms_bucket"}
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


def test_hop_names_are_the_documented_order() -> None:
    assert HOPS == ("intake", "router", "tier_wait", "slot_wait", "engine", "reply")
