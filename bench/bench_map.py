"""Maps against a hand-written asyncio.gather over AsyncOpenAI, on the same loopback server, in one run.

1. a batch of 100 two-call runs (tool call + answer) at 50 ms latency: agent.batch_chat_async and
   agent.map_async (both max_concurrency="auto") vs gather (target <= 1.15x);
2. 1,000 one-call items against a server answering 429 + Retry-After beyond 20 concurrent requests:
   map_async "auto" (target: 0 failed, time <= 1.25x of 1,000 / 20 x latency), vs the raw gather (its
   failed items printed) and vs a gather bounded by exactly 20 (the best a client can do here);
3. 10,000 items with the map panel's view model attached (the kernel-side cost of the live panel),
   against 1,000: time and peak RSS per item (target: linear or better).

Run: python bench/bench_map.py   (items 3 is skipped with --quick)
"""

from __future__ import annotations

import asyncio
import resource
import statistics
import sys
import time
from typing import Any

import openai

from menglong_magic import ChatAgent, tool
from menglong_magic.models import OpenAIModel
from menglong_magic.testing import ScriptedOpenAIServer, call_tools, reply, tool_call
from menglong_magic.tools import as_tool

LATENCY = 0.05
REPEATS = 3


@tool
def lookup(key: str) -> str:
    """Look a key up."""
    return f"value of {key}"


def two_call_responder(body: dict[str, Any]) -> Any:
    last = body["messages"][-1]
    if last["role"] == "user":
        return call_tools(tool_call("lookup", {"key": last["content"]}), delay=LATENCY)
    return reply(f"answer: {last['content']}", delay=LATENCY)


async def batch_of_100(server: ScriptedOpenAIServer) -> None:
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-bench", max_retries=0)
    schema = as_tool(lookup).schema()

    async def hand(i: int) -> str:
        messages: list[Any] = [{"role": "user", "content": f"m{i}"}]
        first = await client.chat.completions.create(model="m", messages=messages, tools=[schema])
        call = first.choices[0].message.tool_calls[0]
        messages += [first.choices[0].message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": f"value of m{i}"}]
        second = await client.chat.completions.create(model="m", messages=messages, tools=[schema])
        return second.choices[0].message.content or ""

    agent = ChatAgent(model=OpenAIModel("m", base_url=server.base_url, api_key="sk-bench"), mode="auto",
                      tools=[lookup])
    await hand(0)
    await agent.chat_async("warm up")
    agent.clear_context()
    items = [f"m{i}" for i in range(100)]
    timings: dict[str, list[float]] = {"gather": [], "batch": [], "map": []}
    for _ in range(REPEATS):
        t = time.perf_counter()
        await asyncio.gather(*(hand(i) for i in range(100)))
        timings["gather"].append(time.perf_counter() - t)
        t = time.perf_counter()
        await agent.batch_chat_async(items)
        timings["batch"].append(time.perf_counter() - t)
        t = time.perf_counter()
        result = await agent.map_async(items)
        timings["map"].append(time.perf_counter() - t)
        assert not result.errors
    g, b, m = (statistics.median(timings[k]) for k in ("gather", "batch", "map"))
    print(f"1. batch of 100 two-call runs at {LATENCY * 1000:.0f} ms: gather {g * 1000:.0f} ms, "
          f"batch_chat_async {b * 1000:.0f} ms ({b / g:.2f}x), map_async {m * 1000:.0f} ms ({m / g:.2f}x) "
          f"(target <= 1.15x); limiter {agent.limiter()!r}")
    await client.close()


async def rate_limited_1000() -> None:
    n, cap = 1000, 20
    ideal = n / cap * LATENCY
    with ScriptedOpenAIServer(responder=lambda body: reply("ok", delay=LATENCY), rate_limit=cap,
                              rate_limit_retry_after=0.1) as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-bench")  # the SDK's own 2 retries

        async def one(i: int) -> str:
            c = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"r{i}"}])
            return c.choices[0].message.content or ""

        await one(0)
        t = time.perf_counter()
        raw = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
        raw_time = time.perf_counter() - t
        raw_failed = sum(isinstance(r, BaseException) for r in raw)
        raw_429 = server.rate_limited
        await asyncio.sleep(0.5)

        bound = asyncio.Semaphore(cap)

        async def bounded(i: int) -> str:
            async with bound:
                return await one(i)

        server.reset_stats()
        t = time.perf_counter()
        fixed = await asyncio.gather(*(bounded(i) for i in range(n)), return_exceptions=True)
        fixed_time = time.perf_counter() - t
        fixed_failed = sum(isinstance(r, BaseException) for r in fixed)

        agent = ChatAgent(model=OpenAIModel("m", base_url=server.base_url, api_key="sk-bench"))
        server.reset_stats()
        t = time.perf_counter()
        result = await agent.map_async([f"r{i}" for i in range(n)])
        map_time = time.perf_counter() - t
        limiter = agent.limiter()
        print(f"2. {n} items, server limit {cap} concurrent (429 + Retry-After 0.1 s beyond), {LATENCY * 1000:.0f} ms: "
              f"ideal {ideal:.2f} s")
        print(f"   raw gather (SDK retries): {raw_time:.2f} s, {raw_failed} of {n} items failed, {raw_429} 429s")
        print(f"   gather bounded by exactly {cap}: {fixed_time:.2f} s, {fixed_failed} failed")
        print(f"   map_async auto: {map_time:.2f} s = {map_time / ideal:.2f}x ideal (target <= 1.25x), "
              f"{map_time / fixed_time:.2f}x the exact bound; {len(result.errors)} failed, "
              f"{server.rate_limited} 429s; {limiter!r}")
        await client.close()


async def with_panel(n: int, server: ScriptedOpenAIServer) -> tuple[float, float, int]:
    from menglong_magic.ui.mapview import MapViewModel

    view = MapViewModel("bench")
    renders = 0
    last = 0.0

    def on_event(event: Any) -> None:
        nonlocal renders, last
        view.apply(event)
        now = time.perf_counter()
        if now - last >= 0.1:  # what the panel's throttled flush renders, at 10 Hz
            last = now
            view.stats_html()
            view.rows_html()
            renders += 1

    agent = ChatAgent(model=OpenAIModel("m", base_url=server.base_url, api_key="sk-bench"))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    result = await agent.map_async([f"p{i}" for i in range(n)], on_event=on_event)
    elapsed = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert not result.errors and view.done == n
    return elapsed, (after - before) / 1024, renders


async def ten_thousand() -> None:
    with ScriptedOpenAIServer(responder=lambda body: reply("ok")) as server:
        small, small_rss, _ = await with_panel(1000, server)
        big, big_rss, renders = await with_panel(10_000, server)
    print(f"3. with the map view attached: 1,000 items {small:.2f} s ({small / 1000 * 1e3:.2f} ms/item), "
          f"10,000 items {big:.2f} s ({big / 10_000 * 1e3:.2f} ms/item): time ratio {big / small:.1f}x for 10x "
          f"items (linear = 10x); peak RSS growth {small_rss:.1f} MB vs {big_rss:.1f} MB; {renders} renders")


async def main() -> None:
    with ScriptedOpenAIServer(responder=two_call_responder) as server:
        await batch_of_100(server)
    await rate_limited_1000()
    if "--quick" not in sys.argv:
        await ten_thousand()


if __name__ == "__main__":
    asyncio.run(main())
