"""Batches against a hand-written asyncio.gather over AsyncOpenAI, in one run, on a server that keeps up.

The server (bench/fast_openai_server.py: uvicorn + httptools + uvloop, in its own process) answers each item
with a tool call, then with the answer: two model calls per item, one tool round, as a typical agent item.

1. a batch of 100 items with ``agent.batch_chat_async`` (default pacing, "auto") vs ``asyncio.gather`` of the
   same two calls per item written by hand, at 0 ms and 50 ms latency per call (targets: <= 1.3x at 0 ms,
   <= 1.15x at 50 ms); also the old pacing (slow start from 32 in flight), and the same gather over the SDK's
   aiohttp client (the transport the agent's model uses, so the engine's own cost shows);
2. 20 isolated items one after another with ``agent.chat_async`` (the per-run engine alone) vs a hand-written
   loop (target <= 1.1x).

Wall-clock ratios move with the load of a shared machine; the CPU time of this process (``time.process_time``,
all threads) is printed beside them.

Run: python bench/bench_batch.py [--repeats N]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fast_openai_server import FastServer
from hand_loop import aiohttp_client, hand_written, lookup

from menglong_magic import ChatAgent
from menglong_magic.agent.limiter import AdaptiveLimiter
from menglong_magic.loopcache import PerLoop
from menglong_magic.models import OpenAIModel

BATCH = 100
SEQUENTIAL = 20
REPEATS = int(sys.argv[sys.argv.index("--repeats") + 1]) if "--repeats" in sys.argv else 5


def make_agent(server: FastServer) -> ChatAgent:
    return ChatAgent(model=OpenAIModel("m", base_url=server.base_url, api_key="sk-bench"), mode="auto",
                     tools=[lookup])


CPU: dict[str, list[float]] = {}  # CPU seconds of this process (all threads) per measured kind


async def timed(coro: Any, into: list[Any] | None = None, kind: str = "") -> float:
    c, t = time.process_time(), time.perf_counter()
    result = await coro
    elapsed = time.perf_counter() - t
    CPU.setdefault(kind, []).append(time.process_time() - c)
    if into is not None:
        into.append(result)
    return elapsed


async def batch(latency: float) -> dict[str, float]:
    with FastServer(latency=latency) as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-bench")  # the SDK retries, as the agent does
        item = hand_written(client)
        # The same gather over the SDK's aiohttp client, which the agent's model uses: what the transport alone gives.
        aio_client = aiohttp_client(server.base_url)
        aio_item = hand_written(aio_client)
        agent = make_agent(server)
        old = make_agent(server)  # the previous default: slow start from 32 in flight
        old._limiters = PerLoop(lambda: AdaptiveLimiter(initial=32))
        texts = [f"m{i}" for i in range(BATCH)]
        for warm in (item("w"), aio_item("w"), agent.batch_chat_async(["w"] * 4), old.batch_chat_async(["w"] * 4)):
            await warm
        runs: dict[str, list[float]] = {"gather": [], "aio gather": [], "batch": [], "old": []}
        for _ in range(REPEATS):  # interleaved, so load on the machine hits all alike
            runs["gather"].append(await timed(asyncio.gather(*(item(t) for t in texts)), kind=f"gather {latency}"))
            runs["aio gather"].append(await timed(asyncio.gather(*(aio_item(t) for t in texts))))
            answers: list[Any] = []
            runs["batch"].append(await timed(agent.batch_chat_async(texts), answers, kind=f"batch {latency}"))
            runs["old"].append(await timed(old.batch_chat_async(texts), answers))
            assert all(a == [f"answer: value of {t}" for t in texts] for a in answers), answers[0][:3]
        await client.close()
        await aio_client.close()
    return {k: statistics.median(v) for k, v in runs.items()}


async def sequential(latency: float) -> dict[str, float]:
    with FastServer(latency=latency) as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-bench")  # the SDK retries, as the agent does
        item = hand_written(client)
        aio_client = aiohttp_client(server.base_url)
        aio_item = hand_written(aio_client)
        agent = make_agent(server)
        texts = [f"s{i}" for i in range(SEQUENTIAL)]

        async def loop() -> None:
            for t in texts:
                await item(t)

        async def aio_loop() -> None:
            for t in texts:
                await aio_item(t)

        async def agent_loop() -> None:
            for t in texts:
                await agent.chat_async(t)
                agent.clear_context()  # isolated items, as the hand loop's

        await item("w")
        await aio_item("w")
        await agent.chat_async("w")
        agent.clear_context()
        runs: dict[str, list[float]] = {"loop": [], "agent": [], "aio loop": []}
        for _ in range(REPEATS):
            runs["loop"].append(await timed(loop()))
            runs["aio loop"].append(await timed(aio_loop()))
            runs["agent"].append(await timed(agent_loop()))
        await client.close()
        await aio_client.close()
    return {k: statistics.median(v) for k, v in runs.items()}


async def main() -> None:
    print(f"two model calls per item (one tool round); medians of {REPEATS} interleaved runs")
    for latency, target in ((0.0, 1.3), (0.05, 1.15)):
        m = await batch(latency)
        print(f"1. batch of {BATCH} at {latency * 1000:.0f} ms: gather {m['gather'] * 1000:.0f} ms, "
              f"batch_chat_async {m['batch'] * 1000:.0f} ms = {m['batch'] / m['gather']:.2f}x (target <= {target}x), "
              f"CPU {statistics.median(CPU[f'batch {latency}']) / statistics.median(CPU[f'gather {latency}']):.2f}x; "
              f"old slow start from 32: {m['old'] * 1000:.0f} ms = {m['old'] / m['gather']:.2f}x; "
              f"vs the gather over the SDK's aiohttp client ({m['aio gather'] * 1000:.0f} ms): "
              f"{m['batch'] / m['aio gather']:.2f}x")
    for latency in (0.0, 0.05):
        s = await sequential(latency)
        print(f"2. {SEQUENTIAL} items one after another at {latency * 1000:.0f} ms: "
              f"hand loop {s['loop'] * 1000:.0f} ms, "
              f"chat_async each {s['agent'] * 1000:.0f} ms = {s['agent'] / s['loop']:.2f}x (target <= 1.1x); "
              f"{s['agent'] / s['aio loop']:.2f}x the hand loop over the SDK's aiohttp client "
              f"({s['aio loop'] * 1000:.0f} ms)")


if __name__ == "__main__":
    asyncio.run(main())
