"""Typed results, usage limits and cost, over real HTTP against the scripted loopback server."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

import pydantic
import pytest
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from menglong_magic import ChatAgent, UsageLimits, tool
from menglong_magic.models import OpenAIModel, RetryPolicy
from menglong_magic.testing import call_tools, reply, tool_call

FAST_RETRY = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.1)


class City(pydantic.BaseModel):
    name: str
    population: int


@dataclasses.dataclass
class Point:
    x: float
    y: float


class Pet(TypedDict):
    kind: Literal["cat", "dog"]
    age: int


@tool
def lookup(name: str) -> str:
    """Look up a city."""
    return f"{name}: 2100000 inhabitants"


def model(server: Any, name: str = "scripted", **kw: Any) -> OpenAIModel:
    return OpenAIModel(name, base_url=server.base_url, api_key="sk-test-typed", retry=FAST_RETRY, **kw)


def history_is_valid(messages: list[dict[str, Any]]) -> bool:
    pending: set[str] = set()
    for m in messages:
        if m["role"] == "tool":
            pending.discard(m["tool_call_id"])
        else:
            if pending:
                return False
            pending = {c["id"] for c in m.get("tool_calls") or ()}
    return not pending


async def test_valid_typed_answer_and_the_schema_sent(openai_server: Any) -> None:
    openai_server.enqueue(reply('{"name": "Paris", "population": 2100000}'))
    agent = ChatAgent(model=model(openai_server), output_type=City)
    result = await agent.arun("Paris?")
    assert result.stop_reason == "completed"
    assert result.output == City(name="Paris", population=2100000)
    sent = openai_server.requests[0]["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["name"] == "City"
    assert sent["json_schema"]["schema"]["required"] == ["name", "population"]
    assert sent["json_schema"]["strict"] is False  # pydantic leaves additionalProperties open


@pytest.mark.parametrize(("output_type", "answer", "expected"), [
    (Point, '{"x": 1, "y": 2.5}', Point(1.0, 2.5)),
    (Pet, '```json\n{"kind": "cat", "age": 3}\n```', {"kind": "cat", "age": 3}),
    (int, '{"result": 42}', 42),
    (list[str], '{"result": ["a", "b"]}', ["a", "b"]),
])
async def test_dataclass_typeddict_and_simple_types(openai_server: Any, output_type: Any, answer: str,
                                                   expected: Any) -> None:
    openai_server.enqueue(reply(answer))
    agent = ChatAgent(model=model(openai_server))
    assert await agent.chat_async("give it", output_type=output_type) == expected
    schema = openai_server.requests[0]["response_format"]["json_schema"]["schema"]
    assert schema["type"] == "object"
    assert agent.output_type is None  # a per-run setting


async def test_invalid_then_valid_answer_is_retried_with_the_error(openai_server: Any) -> None:
    openai_server.enqueue(reply('{"name": "Paris", "population": "lots"}'), reply('{"name": "Paris", "population": 2}'))
    agent = ChatAgent(model=model(openai_server))
    result = await agent.arun("Paris?", output_type=City)
    assert result.stop_reason == "completed" and result.output == City(name="Paris", population=2)
    assert result.iterations_used == 2
    retry_prompt = openai_server.requests[1]["messages"][-1]
    assert retry_prompt["role"] == "user" and "population" in retry_prompt["content"]
    assert history_is_valid(agent.messages)


async def test_never_valid_ends_output_invalid_with_the_raw_text(openai_server: Any) -> None:
    openai_server.enqueue(reply("not json"), reply("still not"), reply('{"name": 1}'))
    agent = ChatAgent(model=model(openai_server), output_type=City, output_retries=2)
    result = await agent.arun("Paris?")
    assert result.stop_reason == "output_invalid" and result.output is None
    assert result.final_output == '{"name": 1}' and "population" in (result.error or "")
    assert len(openai_server.requests) == 3
    assert history_is_valid(agent.messages)
    with pytest.raises(ValueError, match="no City answer"):
        openai_server.enqueue(reply("nope"), reply("nope"), reply("nope"))
        await agent.chat_async("again?")


async def test_tool_calls_before_the_typed_answer(openai_server: Any) -> None:
    openai_server.enqueue(call_tools(tool_call("lookup", {"name": "Paris"})),
                          reply('{"name": "Paris", "population": 2100000}'))
    agent = ChatAgent(model=model(openai_server), tools=[lookup], mode="auto", output_type=City)
    result = await agent.arun("How many live in Paris?")
    assert result.output == City(name="Paris", population=2100000)
    assert [c.name for c in result.tool_calls] == ["lookup"]
    assert all("response_format" in r for r in openai_server.requests)


async def test_server_rejecting_response_format_gets_the_final_result_tool(openai_server: Any) -> None:
    openai_server.reject_response_format = True
    openai_server.enqueue(call_tools(tool_call("lookup", {"name": "Paris"})),
                          call_tools(tool_call("final_result", {"name": "Paris", "population": "x"})),
                          call_tools(tool_call("final_result", {"name": "Paris", "population": 7})))
    the_model = model(openai_server)
    agent = ChatAgent(model=the_model, tools=[lookup], mode="auto")
    result = await agent.arun("Paris?", output_type=City)
    assert result.stop_reason == "completed" and result.output == City(name="Paris", population=7)
    assert the_model.supports_response_format is False
    # 1 rejected request, then the tool round, an invalid final_result (told why), a valid one
    assert len(openai_server.requests) == 4
    later = openai_server.requests[1:]
    assert all("response_format" not in r for r in later)
    assert all("final_result" in [t["function"]["name"] for t in r["tools"]] for r in later)
    assert [c.name for c in result.tool_calls] == ["lookup"]  # final_result is not a tool call that ran
    assert history_is_valid(agent.messages)
    told = [m["content"] for m in agent.messages if m["role"] == "tool"]
    assert any("population" in t for t in told) and told[-1] == "Final result accepted."


@pytest.mark.parametrize(("limits", "reason", "requests"), [
    (UsageLimits(max_requests=2), "max_requests=2", 2),
    (UsageLimits(max_tool_calls=1), "max_tool_calls=1", 2),
    (UsageLimits(max_total_tokens=25), "max_total_tokens=25", 2),
    (UsageLimits(max_input_tokens=10), "max_input_tokens=10", 1),
])
async def test_usage_limits_stop_mid_run_with_a_valid_history(openai_server: Any, limits: UsageLimits,
                                                               reason: str, requests: int) -> None:
    openai_server.enqueue(call_tools(tool_call("lookup", {"name": "A"}), usage=(10, 5)),
                          call_tools(tool_call("lookup", {"name": "B"}), usage=(10, 5)),
                          call_tools(tool_call("lookup", {"name": "C"}), usage=(10, 5)),
                          reply("done", usage=(10, 5)))
    agent = ChatAgent(model=model(openai_server), tools=[lookup], mode="auto", usage_limits=limits)
    result = await agent.arun("look things up")
    assert result.stop_reason == "usage_limit" and reason in (result.error or "")
    assert len(openai_server.requests) == requests
    assert history_is_valid(agent.messages)
    executed = [c for c in result.tool_calls if c.result is not None]
    assert len(executed) == len([m for m in agent.messages if m["role"] == "tool"])
    # The next run works on that history.
    openai_server.clear()
    openai_server.enqueue(reply("fine"))
    assert (await agent.arun("and now?", usage_limits=UsageLimits())).stop_reason == "completed"


async def test_cost_known_and_unknown(openai_server: Any) -> None:
    openai_server.enqueue(reply("a", usage=(1000, 100)), reply("b", usage=(1000, 100)), reply("c", usage=(1000, 100)))
    priced = ChatAgent(model=model(openai_server, "gpt-4o-mini", provider="openai"))
    first = await priced.arun("x")
    assert first.usage.cost == pytest.approx(0.00021)  # 1000 in x $0.15/M + 100 out x $0.60/M
    assert "$0.00021" in first.usage.describe()
    unknown = ChatAgent(model=model(openai_server, "my-own-finetune"))
    second = await unknown.arun("y")
    assert second.usage.cost is None  # never a made-up number
    local = ChatAgent(model=model(openai_server, "gpt-4o-mini"))  # loopback URL: the provider is unknown
    third = await local.arun("z")
    assert third.usage.cost is None
    total = first.usage + second.usage
    assert total.cost is None and total.total_tokens == 2200
    assert (first.usage + first.usage).cost == pytest.approx(0.00042)
    assert json.loads(first.to_json())["usage"]["total_tokens"] == 1100
