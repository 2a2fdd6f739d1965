"""The example MCP server (examples/mcp_server.py) plus tools that only tests need.

``getenv`` shows what the child's environment holds, ``fail`` answers with an ``is_error`` result,
``add_tool`` adds a tool at run time (the client must refresh its list to see it), ``slow`` sleeps.
"""

from __future__ import annotations

import asyncio
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples"))

from mcp.server.mcpserver.exceptions import ToolError
from mcp_server import app, main


@app.tool()
def getenv(name: str) -> str:
    """The value of an environment variable in the server's process, or <unset>."""
    return os.environ.get(name, "<unset>")


@app.tool()
def fail(message: str) -> str:
    """Always fails with the given message."""
    raise ToolError(message)


@app.tool()
def add_tool(name: str) -> str:
    """Add a tool called `name` that answers 'hello from NAME'."""

    def added() -> str:
        return f"hello from {name}"

    app.add_tool(added, name=name, description=f"A tool added at run time ({name}).")
    return f"added {name}"


@app.tool()
async def slow(seconds: float) -> str:
    """Sleep, then answer."""
    await asyncio.sleep(seconds)
    return f"slept {seconds}"


if __name__ == "__main__":
    main()
