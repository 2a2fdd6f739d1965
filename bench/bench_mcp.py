"""MCP tool cost: server start + first listing, and per-call latency, stdio and streamable HTTP on 127.0.0.1.

    python bench/bench_mcp.py

Prints figures; asserts nothing (machines are noisy). Uses examples/mcp_server.py.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from menglong_magic.tools.mcp import MCPServer

EXAMPLE = str(Path(__file__).resolve().parents[1] / "examples" / "mcp_server.py")
CALLS = 200


async def measure(server: MCPServer) -> None:
    started = time.perf_counter()
    await server.list_tools()
    opened = time.perf_counter() - started
    times = []
    for i in range(CALLS):
        t = time.perf_counter()
        await server.call_tool("word_stats", {"text": f"call number {i}"})
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    await asyncio.gather(*(server.call_tool("word_stats", {"text": "x"}) for _ in range(50)))
    concurrent = time.perf_counter() - t
    t = time.perf_counter()
    await server.aclose()
    closed = time.perf_counter() - t
    print(f"{server.transport:5}: start+list {opened * 1000:7.1f} ms"
          f" | call median {statistics.median(times) * 1000:5.2f} ms"
          f" p95 {sorted(times)[int(CALLS * 0.95)] * 1000:5.2f} ms | 50 concurrent calls {concurrent * 1000:6.1f} ms"
          f" | close {closed * 1000:6.1f} ms")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def main() -> None:
    await measure(MCPServer.stdio(sys.executable, [EXAMPLE]))
    port = free_port()
    # Started once, before anything is timed: blocking the loop here costs the benchmark nothing.
    process = subprocess.Popen([sys.executable, EXAMPLE, "--http", "--port", str(port)],  # noqa: ASYNC220
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        await measure(MCPServer.http(f"http://127.0.0.1:{port}/mcp"))
    finally:
        process.terminate()
        process.wait()


if __name__ == "__main__":
    asyncio.run(main())
