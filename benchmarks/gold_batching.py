"""Gold micro-batching with the embedded engine: what does one batch of refreshes buy?

The same Gold refreshes (8 tokens each, distinct prompts and NPCs) through the embedded engine
(llama.cpp, SmolLM2-135M) two ways, alternating, in one process: one by one as a worker without
batching calls it (``EmbeddedEngine.generate``, which keeps llama.cpp's prompt-prefix cache),
and together through the micro-batcher (``MicroBatcher`` → ``EmbeddedEngine.generate_batch``).
Each round sends ``--refreshes`` calls at once; the figure per side is the median round.

Prints one JSON line: {"refreshes", "rounds", "sequential_s", "batched_s", "speedup",
"per_refresh_ms": {"sequential", "batched"}, "mean_batch", "threads", "loadavg_1m"}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time

from topics.headers import now_ms
from topics.schemas import Request
from workers.engines.batching import MicroBatcher
from workers.engines.embedded import EmbeddedEngine

PROMPTS = [
    "A wolf appears at the gate.",
    "The player offers you a coin.",
    "The bell rings.",
    "A stranger asks for the mill.",
    "Rain starts to fall.",
    "The player draws a sword.",
    "A cart blocks the road.",
    "Night falls on the village.",
]


def refreshes(n: int, round_no: int) -> list[Request]:
    return [
        Request(
            request_id=f"bench-{round_no}-{i}",
            npc_id=f"npc-{i}",
            tenant_id="bench",
            prompt=PROMPTS[i % len(PROMPTS)],
            max_tokens=8,
            created_at_ms=now_ms(),
        )
        for i in range(n)
    ]


async def measure(n: int, rounds: int, threads: int, progress: bool) -> dict[str, object]:
    engine = EmbeddedEngine(persona="gold", threads=threads)
    batcher = MicroBatcher(engine, window_ms=5, max_batch=n)
    sequential: list[float] = []
    batched: list[float] = []
    async with batcher:
        await engine.generate(refreshes(1, -1)[0], now_ms() + 60_000)  # load and warm both paths
        await asyncio.gather(*(batcher.generate(r, now_ms() + 60_000) for r in refreshes(2, -2)))
        for k in range(rounds):
            t = time.perf_counter()
            for r in refreshes(n, 2 * k):
                await engine.generate(r, now_ms() + 60_000)
            sequential.append(time.perf_counter() - t)
            t = time.perf_counter()
            await asyncio.gather(*(batcher.generate(r, now_ms() + 60_000) for r in refreshes(n, 2 * k + 1)))
            batched.append(time.perf_counter() - t)
            if progress:
                print(
                    f"round {k + 1}/{rounds}: one by one {sequential[-1]:.2f} s, batched {batched[-1]:.2f} s",
                    file=sys.stderr,
                )
    seq, bat = statistics.median(sequential), statistics.median(batched)
    return {
        "refreshes": n,
        "rounds": rounds,
        "sequential_s": round(seq, 3),
        "batched_s": round(bat, 3),
        "speedup": round(seq / bat, 2),
        "per_refresh_ms": {"sequential": round(seq / n * 1000, 1), "batched": round(bat / n * 1000, 1)},
        "mean_batch": round(batcher.stats.mean_size, 2),
        "threads": engine.threads,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--refreshes", type=int, default=8, help="refreshes per round (default 8)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per side (default 3)")
    parser.add_argument("--threads", type=int, default=0, help="llama.cpp threads (default: the engine's)")
    parser.add_argument("--json", action="store_true", help="print only the JSON line on stdout")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    load_before = os.getloadavg()[0]
    result = asyncio.run(measure(args.refreshes, args.rounds, args.threads, progress=not args.json))
    result["loadavg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
