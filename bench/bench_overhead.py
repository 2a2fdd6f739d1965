"""Agent overhead per run against a hand-written minimal AsyncOpenAI tool loop, on one loopback server.

Run: python bench/bench_overhead.py   (prints figures and ratios; the target is ratio <= 1.3)
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time

import openai

from menglong_magic import ChatAgent, tool
from menglong_magic.models import OpenAIModel, ScriptedModel, call, calls, reply
from menglong_magic.testing import ScriptedOpenAIServer, tool_then_answer_responder

SEQUENTIAL_RUNS = 40
BATCH = 100
REPEATS = 3


@tool
def lookup(key: str) -> str:
    """Look a key up."""
    return f"value of {key}"


TOOLS = [lookup.__menglong_tool__.schema()]  # type: ignore[attr-defined]


async def hand_written(client: openai.AsyncOpenAI, task: str) -> str:
    """The minimal correct tool loop an expert would write."""
    messages: list[dict] = [{"role": "user", "content": task}]
    while True:
        completion = await client.chat.completions.create(model="m", messages=messages, tools=TOOLS)
        message = completion.choices[0].message
        if not message.tool_calls:
            return message.content or ""
        messages.append({"role": "assistant", "content": message.content, "tool_calls": [
            {"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": c.function.arguments}}
            for c in message.tool_calls]})
        for c in message.tool_calls:
            result = await asyncio.to_thread(lookup, **json.loads(c.function.arguments))
            messages.append({"role": "tool", "tool_call_id": c.id, "content": result})


async def measure(server: ScriptedOpenAIServer) -> dict[str, float]:
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-bench", max_retries=0)
    model = OpenAIModel("m", base_url=server.base_url, api_key="sk-bench")

    def agent() -> ChatAgent:
        return ChatAgent(model=model, mode="auto", tools=[lookup], max_concurrency=BATCH)

    await hand_written(client, "warm up")
    await agent().arun("warm up")
    figures: dict[str, list[float]] = {k: [] for k in ("hand_seq", "agent_seq", "hand_batch", "agent_batch")}
    for _ in range(REPEATS):
        t = time.perf_counter()
        for _ in range(SEQUENTIAL_RUNS):
            await hand_written(client, "find x")
        figures["hand_seq"].append((time.perf_counter() - t) / SEQUENTIAL_RUNS)
        t = time.perf_counter()
        for _ in range(SEQUENTIAL_RUNS):
            await agent().arun("find x")
        figures["agent_seq"].append((time.perf_counter() - t) / SEQUENTIAL_RUNS)
        t = time.perf_counter()
        await asyncio.gather(*(hand_written(client, f"find {i}") for i in range(BATCH)))
        figures["hand_batch"].append(time.perf_counter() - t)
        t = time.perf_counter()
        a = agent()
        await a.batch_chat_async([f"find {i}" for i in range(BATCH)])
        figures["agent_batch"].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in figures.items()}


async def parallel_sync_tools() -> float:
    @tool
    def slow(i: int) -> int:
        time.sleep(0.2)
        return i

    agent = ChatAgent(model=ScriptedModel([calls(*[call("slow", {"i": i}) for i in range(5)]), reply("ok")]),
                      mode="auto", tools=[slow])
    t = time.perf_counter()
    await agent.arun("five slow tools")
    return time.perf_counter() - t


def main() -> None:
    with ScriptedOpenAIServer(responder=tool_then_answer_responder("lookup", {"key": "x"}, "found")) as server:
        f = asyncio.run(measure(server))
    print(f"sequential run (tool call + answer, 2 requests): hand-written {f['hand_seq'] * 1000:.2f} ms, "
          f"agent {f['agent_seq'] * 1000:.2f} ms, ratio {f['agent_seq'] / f['hand_seq']:.2f}x (target <= 1.3x)")
    print(f"batch of {BATCH} runs: hand-written gather {f['hand_batch'] * 1000:.0f} ms, "
          f"agent batch_chat_async {f['agent_batch'] * 1000:.0f} ms, ratio {f['agent_batch'] / f['hand_batch']:.2f}x")
    elapsed = asyncio.run(parallel_sync_tools())
    print(f"five 200 ms sync tools in one turn: {elapsed * 1000:.0f} ms (sequential would be ~1000 ms)")


if __name__ == "__main__":
    main()
