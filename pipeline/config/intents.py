"""Gold's intent cache: how long an intent lives, how often active NPCs are re-thought.

Why the defaults are what they are: docs/architecture.md, "Gold's two paths" and "Keeping the
active set fresh".
"""

from __future__ import annotations

from pipeline.config.fields import Group, setting


class IntentSettings(Group):
    """Gold's intent cache (docs/architecture.md, "Gold's two paths")."""

    ttl_ms: int = setting(
        "NPCFLOW_INTENT_TTL_MS",
        1000,
        "an intent older than this is not served (Redis TTL; near caches fall back to the default)",
        ge=1,
        le=86_400_000,
    )
    # 2 Hz keeps an intent under 500 ms old plus the engine's time, well inside the 1 s TTL; at 1 Hz
    # an intent would expire just as its successor lands. Below 0.1 Hz an intent outlives any
    # sensible TTL; above 10 Hz the model re-thinks faster than a game acts on it.
    refresh_hz: float = setting(
        "NPCFLOW_GOLD_REFRESH_HZ",
        2.0,
        "model refreshes per second of each active NPC (keep 1/rate well under the TTL)",
        ge=0.1,
        le=10.0,
    )
    active_lease_ms: int = setting(
        "NPCFLOW_GOLD_ACTIVE_LEASE_MS",
        10_000,
        "an NPC stays active this long after its last Gold request or watch renewal",
        ge=1_000,
        le=3_600_000,
    )
    refresh_timeout_ms: int = setting(
        "NPCFLOW_INTENT_REFRESH_TIMEOUT_MS",
        2000,
        "a refresh with no new intent by then is given up (and the NPC refreshed again later)",
        ge=1,
        le=600_000,
    )
    defaults_file: str | None = setting(
        "NPCFLOW_DEFAULT_INTENTS_FILE",
        None,
        "default intent per NPC archetype",
        shown_default="the packaged pipeline/intents/default_intents.yaml",
    )
    fast_path: bool = setting(
        "NPCFLOW_GOLD_FAST_PATH",
        True,
        "the router answers realtime Gold requests from its near cache of intents, marking their NPCs active",
    )

    @property
    def refresh_period_ms(self) -> float:
        return 1000.0 / self.refresh_hz
