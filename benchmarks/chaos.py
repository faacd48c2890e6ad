"""Chaos benchmark: the pipeline under load with one fault, as real processes on the embedded stack.

Scenarios (devstack/chaos.py says exactly what each does):
  worker-kill    SIGKILL one of two Silver workers mid-load
  router-kill    SIGKILL one of two routers mid-load
  engine-outage  Silver's engine refuses, then hangs, then recovers (breaker opens, falls back, closes)
  tenant-flood   a quiet tenant alone, then while another floods at 10x its rate
  broker-kill    SIGKILL one of three Kafka brokers mid-load, restart it on its data directory

Prints one JSON line: {"scenario", "sent", "replied_once", "duplicates_delivered", "lost",
"dead_letters", "fallbacks", "breaker_opened", "recovered", "recovery_s", "broker", ...};
tenant-flood adds {"victim_p95_ms", "victim_baseline_p95_ms", "victim_ratio"}, broker-kill
{"broker_kill"} (which node, when it was back). Progress goes to stderr.
Services given in the environment (NPCFLOW_KAFKA_BOOTSTRAP, NPCFLOW_REDIS_URL, ...) are used;
the rest are started. broker-kill starts a cluster of three brokers (replication factor 3,
min.insync.replicas 2) unless NPCFLOW_KAFKA_BOOTSTRAP names one, which it cannot kill.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import psutil

from devstack.broker_kill import broker_restarter
from devstack.chaos import SCENARIOS
from devstack.chaos_load import run_scenario, stderr_progress
from devstack.kafka_dist import broker_identity
from devstack.stack import EmbeddedStack
from pipeline import eventloop
from pipeline.config import Settings


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--scenario", choices=SCENARIOS, required=True, help="which fault to inject")
    parser.add_argument("--duration", type=float, default=None, help="seconds of load (default per scenario)")
    parser.add_argument("--rate", type=float, default=None, help="requests/s of the main (quiet) tenant")
    parser.add_argument("--json", action="store_true", help="print only the JSON line on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress display on stderr")
    args = parser.parse_args()
    settings = Settings.from_env(stack_file=False)
    if args.scenario == "broker-kill" and not settings.kafka_bootstrap:
        # Only replicas on other brokers keep an acknowledged record through a broker's death.
        settings = settings.with_(embedded_kafka_nodes=3)
    eventloop.install(settings.process.event_loop)
    work = Path(tempfile.mkdtemp(prefix="npcflow-chaos-"))
    load_before = psutil.getloadavg()[0]
    started = time.monotonic()
    stack = EmbeddedStack(work / "stack", settings=settings)
    endpoints = stack.start()
    broker_started = "kafka" in stack.started
    try:
        restart = broker_restarter(stack) if broker_started else None
        result = run_scenario(
            args.scenario,
            endpoints,
            work,
            duration_s=args.duration,
            rate=args.rate,
            progress=None if args.quiet else stderr_progress,
            broker_restart=restart,
        )
    finally:
        stack.stop()
    result |= broker_identity(started=broker_started)
    result["brokers"] = settings.embedded_kafka_nodes if broker_started else None
    result["wall_s"] = round(time.monotonic() - started, 1)
    result["loadavg_1m"] = {"before": round(load_before, 2), "after": round(psutil.getloadavg()[0], 2)}
    if not args.json:
        print(f"{args.scenario}: lost {result['lost']}, logs in {work}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
