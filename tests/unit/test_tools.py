"""@tool: schemas from hints and docstrings (pydantic), validation, execution, serialisation."""

from __future__ import annotations

import asyncio
import enum
from typing import Literal, Optional

import pydantic
import pytest

from menglong_magic import tool
from menglong_magic.tools import Tool, as_tool, execute_tool_call, is_tool, serialize_result


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Address(pydantic.BaseModel):
    city: str
    zip: str | None = None


def test_bare_decorator_keeps_the_function_callable() -> None:
    @tool
    def double(x: int) -> int:
        """Double a number."""
        return 2 * x

    assert double(4) == 8 and is_tool(double)
    schema = as_tool(double).schema()
    assert schema["function"]["name"] == "double"
    assert schema["function"]["description"] == "Double a number."
    assert schema["function"]["parameters"]["properties"]["x"] == {"type": "integer"}


def test_decorator_with_options_and_async() -> None:
    @tool(name="lookup", description="Look a thing up.")
    async def find(q: str) -> str:
        return q

    t = as_tool(find)
    assert (t.name, t.description, t.is_async) == ("lookup", "Look a thing up.", True)
    assert asyncio.run(find("x")) == "x"


@pytest.mark.parametrize("style", ["google", "numpy", "sphinx"])
def test_parameter_descriptions_from_docstrings(style: str) -> None:
    docs = {
        "google": "Search.\n\nArgs:\n    query: What to look for.\n    limit: How many.\n",
        "numpy": "Search.\n\nParameters\n----------\nquery : str\n    What to look for.\nlimit : int\n    How many.\n",
        "sphinx": "Search.\n\n:param query: What to look for.\n:param limit: How many.\n",
    }

    def search(query: str, limit: int = 5) -> list[str]:
        return []

    search.__doc__ = docs[style]
    params = Tool(search).parameters
    assert params["properties"]["query"]["description"] == "What to look for."
    assert params["properties"]["limit"] == {"default": 5, "description": "How many.", "type": "integer"}
    assert params["required"] == ["query"]
    assert Tool(search).description == "Search."


def test_rich_types() -> None:
    def f(color: Color, mode: Literal["a", "b"], tags: list[str], meta: dict[str, int],
          address: Address, note: Optional[str] = None) -> str:  # noqa: UP045 - Optional on purpose
        return ""

    t = Tool(f)
    props = t.parameters["properties"]
    assert t.parameters["$defs"]["Color"]["enum"] == ["red", "blue"]
    assert props["mode"]["enum"] == ["a", "b"]
    assert props["tags"] == {"items": {"type": "string"}, "type": "array"}
    assert props["meta"]["additionalProperties"] == {"type": "integer"}
    assert props["address"] == {"$ref": "#/$defs/Address"}
    assert {"type": "null"} in props["note"]["anyOf"]
    assert sorted(t.parameters["required"]) == ["address", "color", "meta", "mode", "tags"]
    # validation coerces into the declared types
    kwargs = t.validate({"color": "red", "mode": "a", "tags": ["x"], "meta": {"k": "3"},
                         "address": {"city": "Oslo"}})
    assert kwargs["color"] is Color.RED and kwargs["meta"] == {"k": 3}
    assert isinstance(kwargs["address"], Address)
    with pytest.raises(pydantic.ValidationError):
        t.validate({"color": "green", "mode": "a", "tags": [], "meta": {}, "address": {"city": "x"}})


async def test_execution_outcomes_and_serialisation() -> None:
    calls: list[int] = []

    def rec(n: int) -> dict[str, int]:
        calls.append(n)
        return {"n": n}

    tools = {"rec": Tool(rec)}
    ok = await execute_tool_call(tools, "rec", '{"n": "7"}')
    assert ok.ok and ok.content == '{"n":7}' and calls == [7]
    bad = await execute_tool_call(tools, "rec", '{"n": "seven"}')
    assert not bad.ok and "invalid arguments for tool 'rec'" in bad.content and calls == [7]
    extra = await execute_tool_call(tools, "rec", '{"n": 1, "zzz": 2}')
    assert not extra.ok and "zzz" in extra.content
    assert (await execute_tool_call(tools, "rec", "[1]")).error.startswith("the arguments for tool 'rec' must be")
    assert serialize_result("plain") == "plain"
    assert serialize_result(Address(city="Oslo")) == '{"city":"Oslo","zip":null}'
    assert serialize_result([1, 2]) == "[1,2]"
