"""The item both batch benchmarks time against: one tool, and a hand-written two-call AsyncOpenAI loop for it."""

from __future__ import annotations

from typing import Any

import openai

from menglong_magic import tool
from menglong_magic.tools import as_tool


@tool
def lookup(key: str) -> str:
    """Look a key up."""
    return f"value of {key}"


def hand_written(client: openai.AsyncOpenAI) -> Any:
    """``item(text)``: ask, run the one tool call, ask again — what a user would write without the agent."""
    schema = as_tool(lookup).schema()

    async def item(text: str) -> str:
        messages: list[Any] = [{"role": "user", "content": text}]
        first = await client.chat.completions.create(model="m", messages=messages, tools=[schema])
        call = first.choices[0].message.tool_calls[0]
        messages += [first.choices[0].message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": lookup(text)}]
        second = await client.chat.completions.create(model="m", messages=messages, tools=[schema])
        return second.choices[0].message.content or ""

    return item


def aiohttp_client(base_url: str) -> openai.AsyncOpenAI:
    """AsyncOpenAI over the SDK's aiohttp client: the transport the agent's model uses, for a like-for-like gather."""
    return openai.AsyncOpenAI(base_url=base_url, api_key="sk-bench", http_client=openai.DefaultAioHttpClient())
