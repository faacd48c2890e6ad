"""One long-lived MCP client session per worker, to the game-state MCP server.

Connecting costs a handshake (and, over stdio, a process start): it is done once, in the
background, and kept; a tool call never waits for a connection. While the session is down every
call fails at once (:class:`ToolUnavailable`, 0 ms), so a dead MCP server costs a request no
time, and a background task reconnects with backoff (0.2 s doubling to 5 s). A call that raises
anything but a timeout marks the session broken; so do three timeouts in a row (a stdio child
that hangs never raises).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shlex
from typing import Any

from mcp import Client, StdioServerParameters

from pipeline import config
from pipeline.config import ToolSettings
from pipeline.lifecycle import Lifecycle

log = logging.getLogger("npcflow.tools")

#: A URL (streamable HTTP), a child command (stdio), or an in-process server (unit tests).
McpTarget = Any

#: Timeouts in a row after which the session is treated as broken and reconnected.
BROKEN_AFTER_TIMEOUTS = 3


class ToolUnavailable(RuntimeError):
    """No session to the MCP server (not connected yet, or it went away)."""


class ToolFailed(RuntimeError):
    """The MCP server answered the call with an error (``isError``)."""


def target_of(settings: ToolSettings) -> str | StdioServerParameters | None:
    """The URL (streamable HTTP) or the child command (stdio) the settings name; None: no tools."""
    if settings.mcp_url:
        return settings.mcp_url
    if settings.mcp_command:
        argv = shlex.split(settings.mcp_command)
        # The child needs the worker's NPCFLOW_* endpoints: the SDK's default passes only PATH & co.
        return StdioServerParameters(command=argv[0], args=argv[1:], env=config.environ())
    return None


def _why(exc: BaseException) -> str:
    """The first real error inside anyio's exception groups, as one short line."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return (str(exc) or type(exc).__name__)[:200]


def _text(result: Any) -> str:
    """A tool result's text: its text blocks joined (structured content as compact JSON)."""
    blocks = [getattr(block, "text", "") for block in result.content or []]
    text = "".join(b for b in blocks if b)
    if not text and getattr(result, "structured_content", None) is not None:
        text = json.dumps(result.structured_content, separators=(",", ":"))
    return text


class McpToolClient(Lifecycle):
    """``call(name, arguments, timeout_s)`` over a session kept open in the background."""

    def __init__(self, target: McpTarget, *, connect_wait_s: float = 10.0) -> None:
        self.target = target
        self.connect_wait_s = connect_wait_s
        self.connects = 0
        self._client: Client | None = None
        self._connected = asyncio.Event()
        self._broken = asyncio.Event()
        self._timeouts = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def _start(self) -> None:
        self._task = asyncio.create_task(self._keep_connected(), name="mcp-session")
        # Serve the first requests with tools if the server is there; never block a worker on it.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), self.connect_wait_s)
        if not self.connected:
            log.warning("MCP server %s not reachable yet; tool calls fail until it is", self._name())

    async def _stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _name(self) -> str:
        target = self.target
        if isinstance(target, StdioServerParameters):
            return " ".join([target.command, *target.args])
        return str(target) if isinstance(target, str) else type(target).__name__

    async def _keep_connected(self) -> None:
        backoff = 0.2
        while True:
            try:
                async with Client(self.target, cache=None) as client:
                    self._client = client
                    self.connects += 1
                    self._connected.set()
                    backoff = 0.2
                    log.info("MCP session to %s open", self._name())
                    await self._broken.wait()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any transport failure: reconnect later
                log.warning("MCP session to %s failed: %s", self._name(), _why(exc))
            finally:
                self._client = None
                self._connected.clear()
                self._broken.clear()
                self._timeouts = 0
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def call(self, name: str, arguments: dict[str, Any], timeout_s: float) -> str:
        """The tool's text result; raises TimeoutError, :class:`ToolUnavailable` or :class:`ToolFailed`."""
        client = self._client
        if client is None:
            raise ToolUnavailable("MCP server not connected")
        try:
            result = await asyncio.wait_for(client.call_tool(name, arguments), timeout_s)
        except TimeoutError:
            self._timeouts += 1
            if self._timeouts >= BROKEN_AFTER_TIMEOUTS:
                self._broken.set()
            raise
        except Exception as exc:
            self._broken.set()
            raise ToolUnavailable(f"MCP call failed: {_why(exc)}") from exc
        self._timeouts = 0
        if result.is_error:
            raise ToolFailed(_text(result)[:200] or "tool error")
        return _text(result)
