"""docs/architecture.md §1 names every product file one Gold and one Silver request run through.

Each request is traced with ``sys.setprofile`` from the SDK building it, through the router's
logic, to the records a Silver worker produces (the Kafka loops around that need a broker and
are named in §1 from the code). A product file the trace enters and §1 does not name fails the
test, and so does a path §1 names that does not exist. The number of files §1 states for each
request is the trace's count plus the Kafka loops it names from the code (:data:`KAFKA_LOOPS`).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType
from typing import Any

from aiokafka.structs import ConsumerRecord

from pipeline.client import NPCClient
from pipeline.config import Settings
from pipeline.intents import IntentCache
from pipeline.router.gold import GoldPath
from pipeline.router.logic import Router, Source
from topics.catalogue import Tier
from topics.policy import RoutingPolicy
from workers.engines.scripted import ScriptedEngine, ScriptedProfile
from workers.tier_worker import TierWorker
from workers.worker_config import WorkerConfig

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("pipeline/", "topics/", "workers/")
SETTINGS = Settings.from_env({"NPCFLOW_KAFKA_BOOTSTRAP": "127.0.0.1:9"})
#: The product files of the Kafka loops around the traced part (the router's faust agent and
#: transport; the worker's group member), which §1 counts and the trace cannot enter.
KAFKA_LOOPS = {
    "gold": {"pipeline/router/app.py"},
    "silver": {"pipeline/router/app.py", "workers/group_member.py"},
}


def section_one() -> str:
    text = (ROOT / "docs" / "architecture.md").read_text()
    return text[text.index("## 1. ") : text.index("\n## 2. ")]


def named_files() -> set[str]:
    """Every product file §1 names: full paths, and siblings written by name after one in a cell."""
    names: set[str] = set()
    for cell in re.findall(r"[^|\n]+", section_one()):
        folder = ""
        for path in re.findall(r"`([\w/.<>-]+\.py)`", cell):
            if "/" in path:
                folder = path.rsplit("/", 1)[0] + "/"
                names.add(path)
            elif folder:
                names.add(folder + path)
    return {n for n in names if n.startswith(PRODUCT) and "<" not in n}


def stated_count(request: str) -> int:
    """The number of product files §1 says a ``request`` ("Gold", "Silver") runs through."""
    match = re.search(rf"\*\*A {request} request [^*]*\*\* — (\d+) product files", section_one())
    assert match, f"§1 states no file count for a {request} request"
    return int(match[1])


async def traced(run: Callable[[], Awaitable[Any]]) -> set[str]:
    files: set[str] = set()
    root = f"{ROOT}/"

    def profile(frame: FrameType, event: str, arg: object) -> None:
        name = frame.f_code.co_filename
        if event == "call" and name.startswith(root) and name[len(root) :].startswith(PRODUCT):
            files.add(name[len(root) :])

    sys.setprofile(profile)
    try:
        await run()
    finally:
        sys.setprofile(None)
    return files


def unnamed(files: set[str]) -> list[str]:
    return sorted(files - named_files())


async def test_a_gold_request_runs_only_files_section_one_names_and_as_many_as_it_states() -> None:
    answered: list[str] = []

    async def produce(topic: str, key: bytes, value: bytes, headers: object = None) -> None:
        answered.append(topic)

    gold = GoldPath(IntentCache(SETTINGS), produce, produce)
    gold._warm = True  # the near cache has read npc.intents (empty: the default intent answers)
    router = Router(RoutingPolicy.load(), produce, produce, gold=gold)
    client = NPCClient(SETTINGS, tenant_id="gs-path")

    async def run() -> None:
        request = client.build_request("npc-1", "A wolf!", sla="realtime", max_tokens=8)
        await router.route(request.to_bytes(), Source("npc.requests", 0, 0))

    files = await traced(run)
    assert answered[0] == "npc.replies"  # answered by the router, not forwarded
    assert "pipeline/router/gold.py" in files
    assert not unnamed(files), unnamed(files)
    assert len(files | KAFKA_LOOPS["gold"]) == stated_count("Gold")


async def test_a_silver_request_runs_only_files_section_one_names_and_as_many_as_it_states() -> None:
    forwarded: list[tuple[str, bytes, list[tuple[str, bytes]]]] = []

    async def produce(topic: str, key: bytes, value: bytes, headers: Any = None) -> None:
        if topic.startswith("npc.requests."):
            forwarded.append((topic, value, headers))

    router = Router(RoutingPolicy.load(), produce, produce)
    worker = TierWorker(
        WorkerConfig.from_settings(SETTINGS, Tier.SILVER), ScriptedEngine(ScriptedProfile(latency_ms=0))
    )
    client = NPCClient(SETTINGS, tenant_id="gs-path")
    produced: list[str] = []

    async def run() -> None:
        request = client.build_request("npc-1", "Hello there", sla="interactive")
        await router.route(request.to_bytes(), Source("npc.requests", 0, 0))
        topic, value, headers = forwarded[0]
        record = ConsumerRecord(topic, 0, 0, 0, 0, None, value, None, len(value), -1, headers)
        outcome = await worker._serve(record)
        produced.extend(r.topic for r in outcome.records())

    files = await traced(run)
    assert produced == ["npc.replies", "npc.outputs"]
    assert {"workers/serving.py", "workers/replies.py"} <= files
    assert not unnamed(files), unnamed(files)
    assert len(files | KAFKA_LOOPS["silver"]) == stated_count("Silver")


def test_every_file_section_one_names_exists() -> None:
    missing = sorted(n for n in named_files() if not (ROOT / n).is_file())
    assert len(named_files()) > 20 and not missing, missing
