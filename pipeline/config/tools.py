"""Silver's MCP tools, the game-state MCP server and the result cache.

Why the defaults are what they are: docs/architecture.md, "Game state over MCP, tools and the
result cache".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator

from pipeline.config.fields import Group, Names, setting, split_names

#: The request-schema tools a worker knows how to call (``Request.tools``).
KNOWN_TOOLS = ("game_state_query", "rag_search")
#: Every tenant not named in the allowlist.
ANY_TENANT = "*"
Tier = Literal["gold", "silver", "bronze"]


def parse_allowlist(raw: Any) -> Any:
    """``gs-eu-1=game_state_query|rag_search,*=game_state_query`` → tenant → tools.

    A tenant given with nothing after ``=`` may call no tool; a mapping passes as it is.
    """
    if not isinstance(raw, str):
        return raw
    allow: dict[str, tuple[str, ...]] = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        tenant, sep, tools = part.partition("=")
        names = tuple(t.strip() for t in tools.split("|") if t.strip())
        unknown = [t for t in names if t not in KNOWN_TOOLS]
        if not sep or not tenant.strip() or unknown:
            why = f"unknown tool {unknown[0]!r} (known: {', '.join(KNOWN_TOOLS)})" if unknown else "bad entry"
            raise ValueError(
                f"{why} in {part!r}; write tenant=tool|tool pairs, "
                "e.g. gs-eu-1=game_state_query|rag_search,*="
            )
        allow[tenant.strip()] = names
    return allow


class ToolSettings(Group):
    """How a worker calls the game-state MCP server for a request's tools."""

    mcp_url: str | None = setting(
        "NPCFLOW_MCP_URL",
        None,
        "the game-state MCP server a worker calls for a request's tools (streamable HTTP, "
        "e.g. http://mcp:8765/mcp)",
    )
    mcp_command: str | None = setting(
        "NPCFLOW_MCP_COMMAND",
        None,
        "or a command the worker starts as its child and talks to over stdio, e.g. "
        "npcflow run mcp --transport stdio; used when no URL is given",
    )
    timeout_ms: float = setting(
        "NPCFLOW_TOOL_TIMEOUT_MS",
        50.0,
        "the longest one tool call may take (also cut to the budget fraction of the time left)",
        gt=0,
        le=600_000,
    )
    budget_fraction: float = setting(
        "NPCFLOW_TOOL_BUDGET_FRACTION",
        0.3,
        "share of the time left before the deadline that tool calls may use; the engine keeps the rest",
        ge=0,
        le=1,
    )
    allowlist: Annotated[Mapping[str, tuple[str, ...]], BeforeValidator(parse_allowlist)] = setting(
        "NPCFLOW_TOOL_ALLOWLIST",
        help="tools per tenant, e.g. gs-eu-1=game_state_query|rag_search,*=rag_search "
        "(*: every other tenant; tenant= : no tool)",
        default_factory=dict,
        shown_default="every tenant, every tool",
    )
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


class McpServerSettings(Group):
    """The game-state MCP server (``npcflow run mcp``)."""

    host: str = setting(
        "NPCFLOW_MCP_HOST", "127.0.0.1", "where npcflow run mcp listens (HTTP transport)", min_length=1
    )
    port: int = setting(
        "NPCFLOW_MCP_PORT", 8765, "the port npcflow run mcp listens on (0: a free one)", ge=0, le=65535
    )
    lore_indices: Names = setting(
        "NPCFLOW_LORE_INDICES",
        ("npcflow-lore", "npcflow-story-arcs"),
        "the OpenSearch indices rag_search reads (each prefixed with NPCFLOW_TOPIC_PREFIX)",
    )
    #: Hits ``rag_search`` returns at most.
    rag_max_hits: int = 5


class ResultCacheSettings(Group):
    """Which tiers answer a repeated prompt from the Redis result cache before generating."""

    tiers: Annotated[tuple[Tier, ...], BeforeValidator(split_names)] = setting(
        "NPCFLOW_RESULT_CACHE",
        ("silver", "gold"),
        "tiers that answer a repeated prompt from the Redis result cache (off: none)",
    )
