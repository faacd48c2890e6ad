"""Silver's MCP tools, the game-state MCP server and the result cache, as data.

Read from the environment in :mod:`pipeline.config` (``NPCFLOW_MCP_*``, ``NPCFLOW_TOOL_*``,
``NPCFLOW_RESULT_CACHE``); apart from ``config.py`` only to keep that module short. Nothing here
reads ``os.environ``. Why the defaults are what they are: docs/architecture.md, "Game state over
MCP, tools and the result cache".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

#: The request-schema tools a worker knows how to call (``Request.tools``).
KNOWN_TOOLS = ("game_state_query", "rag_search")
#: The OpenSearch indices ``rag_search`` reads: lore, and the story arcs the OpenSearch sink writes.
DEFAULT_LORE_INDICES = ("npcflow-lore", "npcflow-story-arcs")
#: Every tenant not named in the allowlist.
ANY_TENANT = "*"


class ToolSettingsError(ValueError):
    """A malformed tool setting; config.py turns it into a ConfigError naming the variable."""


@dataclass(frozen=True)
class ToolSettings:
    """How a worker calls the game-state MCP server for a request's tools."""

    #: Streamable HTTP endpoint of the game-state MCP server (``http://host:8765/mcp``).
    mcp_url: str | None = None
    #: Or a command the worker starts as its child and talks to over stdio
    #: (``npcflow run mcp --transport stdio``); used when no URL is given.
    mcp_command: str | None = None
    #: The longest one tool call may take; it is also cut to ``budget_fraction`` of what is left.
    timeout_ms: float = 50.0
    #: Share of the time left before the deadline that tool calls may use: the engine keeps the rest.
    budget_fraction: float = 0.3
    #: tenant → tools it may call; ``*`` for every tenant not named; empty: every tenant, every tool.
    allowlist: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: Characters of one tool's result passed to the engine (the rest is cut, and says so).
    max_result_chars: int = 1500

    @property
    def configured(self) -> bool:
        return bool(self.mcp_url or self.mcp_command)

    def allowed(self, tenant_id: str, tools: Sequence[str]) -> tuple[str, ...]:
        """The tools of ``tools`` this tenant may call (in the request's order)."""
        if not self.allowlist:
            return tuple(tools)
        permitted = self.allowlist.get(tenant_id, self.allowlist.get(ANY_TENANT, ()))
        return tuple(t for t in tools if t in permitted)


@dataclass(frozen=True)
class McpServerSettings:
    """The game-state MCP server (``npcflow run mcp``)."""

    host: str = "127.0.0.1"
    port: int = 8765
    lore_indices: tuple[str, ...] = DEFAULT_LORE_INDICES
    #: Hits ``rag_search`` returns at most.
    rag_max_hits: int = 5


@dataclass(frozen=True)
class ResultCacheSettings:
    """Which tiers answer a repeated prompt from the Redis result cache before generating."""

    tiers: tuple[str, ...] = ("silver", "gold")


def parse_allowlist(raw: str | None) -> dict[str, tuple[str, ...]]:
    """``gs-eu-1=game_state_query|rag_search,*=game_state_query`` → tenant → tools.

    A tenant given with nothing after ``=`` may call no tool.
    """
    allow: dict[str, tuple[str, ...]] = {}
    for part in filter(None, (p.strip() for p in (raw or "").split(","))):
        tenant, sep, tools = part.partition("=")
        names = tuple(t.strip() for t in tools.split("|") if t.strip())
        unknown = [t for t in names if t not in KNOWN_TOOLS]
        if not sep or not tenant.strip() or unknown:
            why = f"unknown tool {unknown[0]!r} (known: {', '.join(KNOWN_TOOLS)})" if unknown else "bad entry"
            raise ToolSettingsError(
                f"{why} in {part!r}; write tenant=tool|tool pairs, "
                "e.g. gs-eu-1=game_state_query|rag_search,*="
            )
        allow[tenant.strip()] = names
    return allow


def parse_names(
    raw: str | None, default: tuple[str, ...], choices: Sequence[str] | None = None
) -> tuple[str, ...]:
    """A comma-separated list (``off`` or ``none``: empty); names outside ``choices`` are an error."""
    if raw is None or not raw.strip():
        return default
    if raw.strip().lower() in ("off", "none", "0"):
        return ()
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    bad = [n for n in names if choices is not None and n not in choices]
    if bad:
        raise ToolSettingsError(f"unknown name {bad[0]!r}; choose from {', '.join(choices or ())} or off")
    return names
