"""What ``npcflow demo`` shows: the live table each second, the active NPCs, the summary.

Reads the :class:`~devstack.game_server.GameServer`'s tallies and the game's near cache; prints,
and decides nothing (``--json`` prints none of it: the CLI prints the summary as one line).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from devstack.game_server import GOLD_SETTLE_S, GameServer
from pipeline.intents import IntentCache
from pipeline.observability.metrics import percentiles
from topics.catalogue import Tier


def render_active(server: GameServer, intents: IntentCache, elapsed: float) -> list[str]:
    """Each active NPC as the game sees it this frame: its intent, how old, and where it came from."""
    lines = [f"\nactive NPCs (watched; Gold re-thinks each at {intents.settings.intents.refresh_hz:g} Hz):"]
    for npc, kind in server.active:
        seen = intents.get_intent(npc, kind)
        source = "model" if seen.from_model else ("game" if not seen.is_default else "default")
        age = f"{seen.age_ms:6.0f} ms" if seen.age_ms is not None else "       -"
        rate = server.refreshes[npc] / elapsed if elapsed > 0 else 0.0
        lines.append(f"  {npc} {kind:10} {source:7} {age}  {rate:4.1f}/s  {seen.intent[:70]}")
    return lines


def render(server: GameServer, elapsed: float, duration: float, engines: dict[Tier, str]) -> str:
    lines = [f"npcflow demo  {elapsed:5.1f}/{duration:.0f} s  rate {server.rate:g} req/s", ""]
    lines.append(f"{'tier':7} {'engine':24} {'sent':>5} {'replied':>7} {'p50 ms':>8} {'p95 ms':>8}  statuses")
    for tier in Tier:
        t = server.tally[tier]
        p = percentiles(t.latencies)
        p50, p95 = p["p50"], p["p95"]
        statuses = " ".join(f"{k}={v}" for k, v in sorted(t.statuses.items()))
        lines.append(
            f"{tier.value:7} {engines[tier][:24]:24} {t.sent:5} {t.replied:7} "
            f"{p50 or '-':>8} {p95 or '-':>8}  {statuses}"
        )
    gold = server.tally[Tier.GOLD].gold_summary()
    if gold["within_budget"] is not None:
        fresh = gold["freshness_ms"]
        share = gold["model_intent_share"]
        lines.append(
            f"\ngold within budget {gold['within_budget']:.1%}  served_by {gold['served_by']}  "
            f"intent age p50/p95 {fresh['p50']}/{fresh['p95']} ms"
            + (f"  model intents {share:.0%} (after {GOLD_SETTLE_S:.0f} s)" if share is not None else "")
        )
    rate = server.sustainable_rate()
    if rate:
        lines.append(f"\nengines sustain ≈ {rate} req/s at this mix (one worker per tier; --rate to change)")
    lines.append("\nNPC lines:")
    for tier in Tier:
        for sample in server.tally[tier].samples:
            lines.append(f"  [{tier.value}] {sample}")
    return "\n".join(lines)


def show_frame(
    server: GameServer, intents: IntentCache, elapsed: float, duration: float, engines: dict[Tier, str]
) -> None:
    """Print this second's table: on a terminal over the last one, else after it."""
    screen = render(server, elapsed, duration, engines)
    screen += "\n" + "\n".join(render_active(server, intents, elapsed))
    print(("\x1b[2J\x1b[H" if sys.stdout.isatty() else "\n") + screen, flush=True)


def show_starting(engines: dict[Tier, str]) -> None:
    print(f"stack up; starting router and workers (engines: {json.dumps(engines)})", flush=True)


def show_summary(summary: dict[str, Any]) -> None:
    print("\nsummary: " + json.dumps(summary, indent=2))
