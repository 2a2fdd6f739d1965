"""A small MCP server written with the official ``mcp`` package (2.x), for the notebooks and the tests.

Run it over stdio (what ``MCPServer.stdio(...)`` / ``%agent_mcp add NAME -- python examples/mcp_server.py`` do)::

    python examples/mcp_server.py

or over streamable HTTP on 127.0.0.1 (then ``MCPServer.http("http://127.0.0.1:8765/mcp")``)::

    python examples/mcp_server.py --http --port 8765

Tools:

- ``word_stats(text)``: counts of words, characters and lines (structured output as well as text);
- ``slow_count(n, delay)``: counts to ``n``, reporting progress after each step (shows on the tool's card);
- ``crash(message)``: writes ``message`` to stderr and exits at once, as a buggy server would.

Everything the server logs goes to stderr, never stdout: stdout is the protocol's channel.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from mcp.server.mcpserver import Context, MCPServer
from pydantic import BaseModel

app = MCPServer("demo", instructions="Text statistics, a slow counter that reports progress, and a crash button.")


class WordStats(BaseModel):
    words: int
    characters: int
    lines: int


@app.tool()
def word_stats(text: str) -> WordStats:
    """Count the words, characters and lines of a text."""
    return WordStats(words=len(text.split()), characters=len(text), lines=len(text.splitlines()) or 1)


@app.tool()
async def slow_count(n: int, ctx: Context, delay: float = 0.05) -> str:
    """Count from 1 to n slowly, reporting progress after each number.

    Args:
        n: How far to count (at most 1000).
        delay: Seconds to wait between numbers.
    """
    n = max(0, min(n, 1000))
    for i in range(1, n + 1):
        await asyncio.sleep(delay)
        await ctx.report_progress(i, n, f"counted to {i}")
    return f"counted to {n}"


@app.tool()
def crash(message: str = "crashing on request") -> str:
    """Make the server exit immediately (to see how a client survives a dead server).

    Args:
        message: The last words the server writes to its stderr.
    """
    print(message, file=sys.stderr, flush=True)
    os._exit(3)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", action="store_true", help="serve streamable HTTP instead of stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    print(f"demo MCP server starting ({'http' if args.http else 'stdio'}, pid {os.getpid()})", file=sys.stderr,
          flush=True)
    if args.http:
        app.run("streamable-http", host=args.host, port=args.port)
    else:
        app.run()


if __name__ == "__main__":
    main()
