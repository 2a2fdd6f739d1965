"""Every parameter name a Python function can have reaches the tool unchanged, and the schema says it."""

from __future__ import annotations

import json
from typing import Any, Literal

import pydantic
import pytest

from menglong_magic import RunContext, tool
from menglong_magic.tools import Tool, as_tool, execute_tool_call

# BaseModel's members and pydantic's reserved/deprecated names, private-looking and non-ASCII names, and the
# internal field names the arguments model itself uses.
NAMES = ["model_config", "model_fields_set", "model_extra", "model_fields", "model_dump", "model_validate",
         "model_post_init", "model_computed_fields", "schema", "schema_json", "json", "copy", "dict", "validate",
         "construct", "fields", "parse_obj", "_private", "__dunder__", "größe", "名前", "Δx", "p0", "p1"]


def make_function(name: str) -> Any:
    """``def probe(query: str, <name>: str) -> str`` returning what it received, for any identifier."""
    namespace: dict[str, Any] = {}
    exec(f"def probe(query: str, {name}: str) -> str:\n    return repr((query, {name}))", namespace)
    return namespace["probe"]


@pytest.mark.parametrize("name", NAMES)
async def test_reserved_and_unusual_names_reach_the_tool(name: str) -> None:
    probe = Tool(make_function(name))
    schema = probe.schema()["function"]["parameters"]
    assert list(schema["properties"]) == ["query", name]
    assert schema["required"] == ["query", name]
    assert schema["properties"][name] == {"type": "string"}
    outcome = await execute_tool_call({"probe": probe}, "probe", json.dumps({"query": "q", name: "gpt-x"}))
    assert outcome.ok, outcome.error
    assert outcome.content == repr(("q", "gpt-x"))


@pytest.mark.parametrize("name", ["model_extra", "model_config", "json", "größe"])
async def test_missing_and_unknown_arguments_are_named_by_their_real_names(name: str) -> None:
    probe = Tool(make_function(name))
    missing = await execute_tool_call({"probe": probe}, "probe", json.dumps({"query": "q"}))
    assert not missing.ok and f"{name}: Field required" in (missing.error or "")
    unknown = await execute_tool_call({"probe": probe}, "probe", json.dumps({"query": "q", name: "x", "p1": "y"}))
    assert not unknown.ok and "p1: Extra inputs are not permitted" in (unknown.error or "")


def test_the_issue_examples() -> None:
    def lookup(query: str, model_extra: str) -> str:
        return f"{query}/{model_extra}"

    def label(model_fields_set: list[str]) -> str:
        return ",".join(model_fields_set)

    def configure(model_config: str) -> str:
        return model_config

    assert Tool(lookup).validate({"query": "q", "model_extra": "gpt-x"}) == {"query": "q", "model_extra": "gpt-x"}
    assert Tool(label).validate({"model_fields_set": ["b", "a"]}) == {"model_fields_set": ["b", "a"]}
    assert Tool(configure).parameters["properties"] == {"model_config": {"type": "string"}}
    assert Tool(configure).validate({"model_config": "fast"}) == {"model_config": "fast"}


class Address(pydantic.BaseModel):
    city: str
    zip: str = ""


async def test_rich_types_under_reserved_names() -> None:
    seen: dict[str, Any] = {}

    @tool
    def book(schema: str | None, json: Literal["a", "b"], copy: list[dict[str, int]], dict: Address,
             model_config: int = 3, validate: bool | None = None, größe: float = 1.5) -> str:
        """Book something.

        Args:
            schema: which schema
            größe: the size
        """
        seen.update(schema=schema, json=json, copy=copy, dict=dict, model_config=model_config, validate=validate,
                    größe=größe)
        return "ok"

    t = as_tool(book)
    props = t.parameters["properties"]
    assert list(props) == ["schema", "json", "copy", "dict", "model_config", "validate", "größe"]
    assert t.parameters["required"] == ["schema", "json", "copy", "dict"]
    assert props["schema"]["description"] == "which schema" and props["größe"]["description"] == "the size"
    assert props["json"]["enum"] == ["a", "b"] and props["model_config"]["default"] == 3
    assert "$defs" in t.parameters and "Address" in t.parameters["$defs"]
    outcome = await execute_tool_call({"book": t}, "book", json.dumps(
        {"schema": None, "json": "b", "copy": [{"n": 1}], "dict": {"city": "Oslo"}, "größe": "2.5"}))
    assert outcome.ok, outcome.error
    assert seen == {"schema": None, "json": "b", "copy": [{"n": 1}], "dict": Address(city="Oslo"), "model_config": 3,
                    "validate": None, "größe": 2.5}
    bad = await execute_tool_call({"book": t}, "book", json.dumps(
        {"schema": "s", "json": "c", "copy": [], "dict": {"zip": "1"}}))
    assert not bad.ok and "json: Input should be 'a' or 'b'" in (bad.error or "") and "dict.city" in (bad.error or "")


async def test_run_context_and_positional_only_parameters() -> None:
    got: list[Any] = []

    async def search(model_extra: str, /, ctx: RunContext, json: int = 0, *, model_config: str = "d") -> str:
        got.append((model_extra, ctx.run_id, json, model_config))
        return "done"

    t = Tool(search)
    assert list(t.parameters["properties"]) == ["model_extra", "json", "model_config"]
    context = RunContext(run_id="run-1", agent=None)
    outcome = await execute_tool_call({"search": t}, "search", json.dumps({"model_extra": "x", "json": 2}), context)
    assert outcome.ok, outcome.error
    assert got == [("x", "run-1", 2, "d")]
