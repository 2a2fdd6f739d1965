"""Batch of 100 chats at 50 ms model latency: agent.batch_chat_async vs a hand-written asyncio.gather.

Run: python bench/bench_batch.py   (target ratio <= 1.3)
"""

from __future__ import annotations

import asyncio
import statistics
import time

import openai

from menglong_magic import ChatAgent
from menglong_magic.models import OpenAIModel
from menglong_magic.testing import ScriptedOpenAIServer, echo_responder

BATCH = 100
REPEATS = 3


async def measure(server: ScriptedOpenAIServer) -> tuple[float, float]:
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-bench", max_retries=0)

    async def one(i: int) -> str:
        c = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"m{i}"}])
        return c.choices[0].message.content or ""

    agent = ChatAgent(model=OpenAIModel("m", base_url=server.base_url, api_key="sk-bench"), max_concurrency=BATCH)
    await one(0)
    await agent.chat_async("warm up")
    agent.clear_context()
    hand, mine = [], []
    for _ in range(REPEATS):
        t = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(BATCH)))
        hand.append(time.perf_counter() - t)
        t = time.perf_counter()
        await agent.batch_chat_async([f"m{i}" for i in range(BATCH)])
        mine.append(time.perf_counter() - t)
    return statistics.median(hand), statistics.median(mine)


def main() -> None:
    with ScriptedOpenAIServer(responder=echo_responder(delay=0.05)) as server:
        hand, mine = asyncio.run(measure(server))
    print(f"batch of {BATCH} chats at 50 ms latency: hand-written gather {hand * 1000:.0f} ms, "
          f"agent.batch_chat_async {mine * 1000:.0f} ms, ratio {mine / hand:.2f}x (target <= 1.3x)")


if __name__ == "__main__":
    main()
