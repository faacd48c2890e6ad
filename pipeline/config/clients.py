"""Settings of the readers at the edges: the game-server SDK and analysts' replay."""

from __future__ import annotations

from pipeline.config.fields import Group, setting


class ClientSettings(Group):
    """The game-server SDK (:class:`pipeline.client.NPCClient`)."""

    # Workers answer every request by its deadline, so silence this long after it means the request
    # or its reply was lost (docs/architecture.md, "Resilience").
    resend_after_s: float = setting(
        "NPCFLOW_CLIENT_RESEND_AFTER_S",
        10.0,
        "the SDK sends a request again under the same id when its reply is this overdue (0: never)",
        ge=0,
        le=86_400,
    )
    max_resends: int = setting(
        "NPCFLOW_CLIENT_MAX_RESENDS", 3, "the most times the SDK sends one request again", ge=0, le=100
    )


class ReplaySettings(Group):
    """``npcflow replay`` (docs/architecture.md, "Replay for analysts")."""

    max_open: int = setting(
        "NPCFLOW_REPLAY_MAX_OPEN",
        100_000,
        "requests npcflow replay holds open at once waiting for their decision and reply (its memory bound)",
        ge=1,
        le=100_000_000,
    )
