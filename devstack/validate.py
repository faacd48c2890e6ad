"""``npcflow validate --embedded``: validate a freshly started embedded deployment, then take it down.

The deployment is the demo's: the embedded stack (``devstack.stack.EmbeddedStack``) and one OS
process per router / tier worker (``devstack.processes.PipelineProcesses``), with the engines the
settings name (the embedded llama.cpp model unless ``--engines`` says otherwise). Each process
binds a free metrics port (``NPCFLOW_METRICS_PORT=0``) and names it in its ready file, so the
metrics check scrapes the processes' real /metrics. The product's ``validate`` command
(:mod:`pipeline.observability.commands`) never imports this module: :mod:`pipeline.cli`, the
composition root, hands it this function, so ``pipeline`` imports nothing from ``devstack``.
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devstack.demo import with_engines
from devstack.processes import PipelineProcesses, background_yields
from devstack.stack import EmbeddedStack
from pipeline.config import Settings
from pipeline.observability.scrape import scrape
from pipeline.observability.validate import TierReport, Validator, as_json, metrics_report
from pipeline.topic_admin import create_embedded_topics
from topics.catalogue import Tier


def validate_embedded(
    settings: Settings,
    tiers: list[Tier],
    *,
    engines: str | None = None,
    burst: int = 20,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Start the stack and the pipeline, probe ``tiers``, scrape /metrics, stop everything."""
    settings = with_engines(settings, engines)
    specs = {t: settings.engines.spec_for(t.value) for t in Tier}
    # A fresh prefix: topics, consumer groups and the breakers' Redis keys are this run's alone.
    prefix = f"validate{uuid.uuid4().hex[:8]}."
    with tempfile.TemporaryDirectory(prefix="npcflow-validate-") as tmp:
        work = Path(tmp)
        stack_settings = Settings.from_env(stack_file=False).with_(engines=settings.engines)
        progress("starting the embedded stack")
        with EmbeddedStack(work / "stack", settings=stack_settings) as stack:
            endpoints = stack.endpoints
            assert endpoints is not None
            settings = endpoints.apply_to(settings).with_(topic_prefix=prefix)
            asyncio.run(create_embedded_topics(settings, prefix))
            env = (
                endpoints.as_env()
                | stack.engine_env
                | {
                    "NPCFLOW_TOPIC_PREFIX": prefix,
                    "NPCFLOW_METRICS_PORT": "0",
                    "NPCFLOW_EMBEDDED_THREADS": "1",
                }
            )
            progress(f"starting the router and workers (engines: {', '.join(specs.values())})")
            with PipelineProcesses(env, work, engines=specs) as procs:
                background_yields(procs, specs)  # CPU models yield the cores to the router
                progress(f"probing {', '.join(t.value for t in tiers)}")
                reports = asyncio.run(Validator(settings, burst=burst).run(tiers))
                targets = procs.metrics_targets()
                metrics = metrics_report(scrape(targets.values()))
                metrics["targets"] = targets
    return report_json(reports, metrics, specs)


def report_json(
    reports: dict[str, TierReport], metrics: dict[str, Any] | None, specs: dict[Tier, str]
) -> dict[str, Any]:
    out = as_json(reports, metrics)
    out["engines"] = {t.value: spec for t, spec in specs.items()}
    return out
