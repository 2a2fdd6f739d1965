"""Maps on Ray against local execution, with a CPU-heavy tool (pure Python, holds the GIL).

Run: python bench/bench_ray.py [ITEMS]   (needs the ray extra; starts a local Ray with 2 CPUs)

Every item is one tool call (~40 ms of pure-Python CPU) and an answer, against the loopback scripted
server (which runs in this process). Prints items/s for the local executor and for Ray with 1 and 2
workers (workers already started: the first map's start-up is printed separately).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from typing import Any

from menglong_magic import ChatAgent, ChatMode
from menglong_magic.maps.ray import RayExecutor, _stop_owned_ray, ensure_ray
from menglong_magic.models import OpenAIModel
from menglong_magic.testing import ScriptedOpenAIServer
from menglong_magic.testing.server import call_tools, reply, tool_call

ROUNDS = 180_000  # ~40 ms of pure Python on this machine


def crunch(text: str) -> str:
    """A CPU-heavy tool: a pure-Python hash loop over the text.

    Args:
        text: The text.
    """
    h = 0
    for i in range(ROUNDS):
        h = (h * 31 + ord(text[i % len(text)]) + i) & 0xFFFFFFFF
    return f"{text}:{h:08x}"


def responder(body: dict[str, Any]) -> Any:
    last = body["messages"][-1]
    if last.get("role") == "user":
        return call_tools(tool_call("crunch", {"text": last["content"]}))
    return reply(f"done {last['content']}")


async def timed(agent: ChatAgent, items: list[str], executor: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = await agent.map_async(items, executor=executor)
    elapsed = time.perf_counter() - t0
    assert result.ok == len(items), result.errors
    return elapsed, result


async def main(n: int) -> None:
    temp = tempfile.mkdtemp(prefix="bench_ray_")
    with ScriptedOpenAIServer(responder=responder) as server:
        agent = ChatAgent(model=OpenAIModel("m", base_url=server.base_url), mode=ChatMode.AUTO, tools=[crunch])
        t0 = time.perf_counter()
        crunch("warm up")
        print(f"one tool call: {1000 * (time.perf_counter() - t0):.1f} ms of CPU")

        items = [f"item {i}" for i in range(n)]
        local_s, _ = await timed(agent, items, "local")
        print(f"local executor      : {n / local_s:6.1f} items/s  ({local_s:.2f} s for {n} items)")

        t0 = time.perf_counter()
        await asyncio.get_running_loop().run_in_executor(None, lambda: ensure_ray(num_cpus=2, temp_dir=temp))
        print(f"local Ray start     : {time.perf_counter() - t0:.1f} s")
        try:
            for workers in (1, 2):
                executor = RayExecutor(num_workers=workers)
                t0 = time.perf_counter()
                await timed(agent, [f"warm {workers}-{i}" for i in range(workers * 2)], executor)
                start = time.perf_counter() - t0
                elapsed, result = await timed(agent, [f"{workers}w {x}" for x in items], executor)
                assert all(r.startswith(f"done {workers}w {x}:") for r, x in zip(result, items, strict=True))
                print(f"ray, {workers} worker(s)    : {n / elapsed:6.1f} items/s  ({elapsed:.2f} s; "
                      f"first map incl. worker start {start:.1f} s)  x{local_s / elapsed:.2f} vs local")
                executor.close()
        finally:
            _stop_owned_ray()
    print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100))
