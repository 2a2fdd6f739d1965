"""Issue #24: the parts every backend builds its answers from, the typed-answer finder, API-safe names,
the Secret holder and per-loop caches (units; the HTTP paths are in tests/integration)."""

from __future__ import annotations

import asyncio
import copy
import gc
import json
import pickle
import threading
import weakref
from typing import Any

import pydantic
import pydantic_core
import pytest

from menglong_magic import ChatAgent, tool
from menglong_magic.agent.output import OutputSpec
from menglong_magic.agent.turn import tool_table
from menglong_magic.loopcache import PerLoop
from menglong_magic.models import OpenAIModel, ScriptedModel, ToolCall, call, calls, reply
from menglong_magic.models.parts import TextJoiner, ToolCallAssembler, check_arguments, clean_text
from menglong_magic.secrets import Secret, redact
from menglong_magic.tools import as_tool
from menglong_magic.tools.names import API_NAME, api_name


# ---------------------------------------------------------------- text
@pytest.mark.parametrize(("raw", "clean"), [
    ("plain", "plain"), ("\ud83d\ude00", "\U0001F600"), ("a\ud83d", "a\ufffd"), ("\ude00b", "\ufffdb"),
    ("\ud83d\ud83d\ude00", "\ufffd\U0001F600"), ("日本語 ✓", "日本語 ✓"),
])
def test_clean_text(raw: str, clean: str) -> None:
    assert clean_text(raw) == clean
    clean_text(raw).encode("utf-8")


@pytest.mark.parametrize(("pieces", "joined"), [
    (["a", "\ud83d", "\ude00", "b"], "a\U0001F600b"),
    (["\ud83d"], "\ufffd"),
    (["\ud83d", "x"], "\ufffdx"),
    (["\ud83d\ude00\ud83d", "\ude01"], "\U0001F600\U0001F601"),
])
def test_text_joiner_holds_a_high_half_until_its_pair(pieces: list[str], joined: str) -> None:
    joiner = TextJoiner()
    out = [joiner.feed(p) for p in pieces] + [joiner.flush()]
    assert "".join(out) == joined
    assert all(piece.encode("utf-8") for piece in out if piece)


# ---------------------------------------------------------------- arguments
@pytest.mark.parametrize(("raw", "text", "problem"), [
    (None, "{}", None), ("", "{}", None), ("  ", "{}", None), ("null", "{}", None),
    ('{"a": 1}', '{"a": 1}', None), ('{"a": "\ud83d\ude00"}', '{"a": "\U0001F600"}', None),
    ('{"a": 1', "{}", "cut off"), ("nope", "{}", "not valid JSON"), ("[1]", "{}", "JSON object"),
    ('"x"', "{}", "JSON object"),
])
def test_check_arguments(raw: str | None, text: str, problem: str | None) -> None:
    got_text, got_problem = check_arguments(raw)
    assert got_text == text
    assert (got_problem is None) == (problem is None)
    if problem:
        assert problem in got_problem  # type: ignore[operator]
        assert raw not in got_problem  # type: ignore[operator]


@pytest.mark.parametrize("raw", ["", "null", '{"a": 1', "garbage", "[]"])
def test_tool_call_to_message_never_copies_raw_invalid_arguments(raw: str) -> None:
    message = ToolCall("c1", "t", raw).to_message()
    assert isinstance(json.loads(message["function"]["arguments"]), dict)
    assert message["function"]["arguments"] == "{}"


def test_tool_call_keeps_provider_fields_for_the_history() -> None:
    call_ = ToolCall("c", "t", "{}", extra={"extra_content": {"google": {"thought_signature": "s"}}})
    assert call_.to_message()["extra_content"] == {"google": {"thought_signature": "s"}}


# ---------------------------------------------------------------- reassembly (fragments as SDK objects give them)
def assemble(fragments: list[tuple[Any, ...]]) -> list[tuple[str, str, str]]:
    assembler = ToolCallAssembler()
    for fragment in fragments:
        assembler.feed(*fragment)
    return [(i, n, a) for i, n, a, _ in assembler.calls()]


@pytest.mark.parametrize(("fragments", "expected"), [
    # OpenAI
    ([(0, "a", "f", ""), (0, None, None, '{"x":'), (0, None, None, "1}"), (1, "b", "g", "{}")],
     [("a", "f", '{"x":1}'), ("b", "g", "{}")]),
    # Ollama: all at index 0, each whole
    ([(0, "a", "f", '{"x":1}'), (0, "b", "f", '{"x":2}'), (0, "c", "g", "{}")],
     [("a", "f", '{"x":1}'), ("b", "f", '{"x":2}'), ("c", "g", "{}")]),
    # no index at all
    ([(None, "a", "f", '{"x":'), (None, None, None, "1}"), (None, "b", "g", "")],
     [("a", "f", '{"x":1}'), ("b", "g", "")]),
    # llama.cpp: name and id repeated
    ([(0, "a", "f", ""), (0, "a", "f", '{"x":'), (0, "a", "f", "1}")], [("a", "f", '{"x":1}')]),
    # name in pieces, id late
    ([(0, None, "get_", ""), (0, None, "weather", '{"x":1}'), (0, "late", None, "")],
     [("late", "get_weather", '{"x":1}')]),
    # cumulative name and id pieces
    ([(0, "ca", "get", ""), (0, "call_9", "get_time", "{}")], [("call_9", "get_time", "{}")]),
    # a fragment without a name is dropped (nothing to call)
    ([(0, "a", None, "{}")], []),
])
def test_tool_call_assembler(fragments: list[tuple[Any, ...]], expected: list[tuple[str, str, str]]) -> None:
    assert assemble(fragments) == expected


# ---------------------------------------------------------------- typed answers as models write them
class Weather(pydantic.BaseModel):
    city: str
    high_c: int


LISBON = Weather(city="Lisbon", high_c=24)


@pytest.mark.parametrize("text", [
    '{"city": "Lisbon", "high_c": 24}',
    '<think>The user wants {"city": ...}. Lisbon is warm.</think>\n{"city": "Lisbon", "high_c": 24}',
    '<think>\nhmm\n</think>```json\n{"city": "Lisbon", "high_c": 24}\n```',
    'Here is the answer:\n```json\n{"city": "Lisbon", "high_c": 24}\n```\nHope this helps!',
    'Sure! {"city": "Lisbon", "high_c": 24} is the forecast.',
    'The schema was {"city": "str"}; my answer: {"city": "Lisbon", "high_c": 24}',
    'reasoning without an opening tag</think>{"city": "Lisbon", "high_c": 24}',
    '<thinking>x</thinking>\n\n```\n{"city": "Lisbon", "high_c": 24}\n```',
])
def test_a_typed_answer_is_found_in_the_text_around_it(text: str) -> None:
    assert OutputSpec.of(Weather).parse_text(text) == LISBON


@pytest.mark.parametrize(("text", "reason"), [
    ("no json here", "no JSON"),
    ('<think>{"city": "Lisbon", "high_c": 24}</think> I cannot say.', "no JSON"),
    ('{"city": "Lisbon"}', "does not match the schema"),
])
def test_no_typed_answer_still_fails_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        OutputSpec.of(Weather).parse_text(text)


def test_a_list_answer_after_prose() -> None:
    assert OutputSpec.of(list[int]).parse_text('Result: {"result": [1, 2]}') == [1, 2]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_reasoning_model_answer_completes_on_the_first_request(stream: bool) -> None:
    model = ScriptedModel([reply('<think>Lisbon, 24</think>\nAnswer: {"city": "Lisbon", "high_c": 24}')])
    agent = ChatAgent(model=model, stream=stream)
    result = await agent.chat_result_async("weather", output_type=Weather)
    assert result.stop_reason == "completed" and result.output == LISBON
    assert len(model.requests) == 1  # type: ignore[attr-defined]


# ---------------------------------------------------------------- names
@pytest.mark.parametrize("name", ["ok_name-1", "fs.read", "Wetter abrufen", "x" * 65, "日本", "", "a b" * 40, "ns/t:v"])
def test_api_name_is_always_valid(name: str) -> None:
    safe = api_name(name)
    assert API_NAME.match(safe)
    if API_NAME.match(name):
        assert safe == name


def test_api_names_of_different_originals_differ() -> None:
    taken: set[str] = set()
    for name in ["fs.read", "fs_read", "fs/read", "fs read", "x" * 70, "x" * 71]:
        safe = api_name(name, taken)
        assert safe not in taken and API_NAME.match(safe)
        taken.add(safe)


def test_response_format_name_is_valid_for_any_class() -> None:
    for cls_name in ["Météo", "Ölpreis", "A" * 90, "_"]:
        cls = pydantic.create_model(cls_name, value=(int, ...))
        name = OutputSpec.of(cls).response_format()["json_schema"]["name"]
        assert API_NAME.match(name), name


class _Toolset:
    def __init__(self, name: str, tools: list[Any]) -> None:
        self.name, self._tools = name, tools

    async def list_tools(self) -> list[Any]:
        return self._tools

    async def aclose(self) -> None:
        pass


@tool
def read(path: str) -> str:
    """Read."""
    return f"read {path}"


async def test_toolset_names_and_clash_prefixes_are_mapped_both_ways() -> None:
    agent = ChatAgent(model=ScriptedModel([]), tools=[read], mode="auto",
                      toolsets=[_Toolset("my server", [as_tool(read, name="read"), as_tool(read, name="fs.read")])])
    with pytest.warns(UserWarning, match="clashes"):
        table = await tool_table(agent.settings(), set())
    assert all(API_NAME.match(n) for n in table)
    assert sorted(table.shown(n) for n in table) == ["fs.read", "my server_read", "read"]
    for api in table:
        assert table.resolve(table.shown(api)) == api
    assert {s["function"]["name"] for s in table.schemas()} == set(table)


async def test_a_call_by_the_original_name_still_reaches_the_tool() -> None:
    model = ScriptedModel([calls(call("fs.read", {"path": "/x"})), reply("done")])
    agent = ChatAgent(model=model, tools=[as_tool(read, name="fs.read")], mode="auto")
    result = await agent.arun("read")
    assert result.tool_calls[0].result == "read /x"
    assert model.requests[0].tools[0]["function"]["name"] != "fs.read"  # type: ignore[attr-defined]


# ---------------------------------------------------------------- secrets
def test_secret_holder_never_shows_the_value() -> None:
    key = "sk-holder-secret-0123456789"
    model = OpenAIModel("m", api_key=key, default_headers={"X-Token": "header-secret-987654"})
    for shown in (repr(vars(model)), str(vars(model)), repr(model), f"{model._key}", str(model._key),
                  pydantic_core.to_json(vars(model), fallback=repr).decode(),
                  json.dumps({k: str(v) for k, v in vars(model).items()})):
        assert key not in shown and "header-secret" not in shown
    blob = pickle.dumps(model)
    assert key.encode() not in blob and b"header-secret" not in blob
    assert pickle.loads(blob)._api_key == "***"
    assert copy.copy(Secret("abcdefgh")).get() == "***"
    assert model._api_key == key and model._default_headers == {"X-Token": "header-secret-987654"}
    assert redact(f"x {key} y") == "x *** y"


# ---------------------------------------------------------------- per-loop caches
class _Closable:
    closed = 0

    async def close(self) -> None:
        type(self).closed += 1


def test_per_loop_values_are_closed_with_their_loop_and_the_loop_is_freed() -> None:
    _Closable.closed = 0
    cache: PerLoop[_Closable] = PerLoop(_Closable, lambda v: v.close())
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def use() -> None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        assert cache.get() is cache.get()

    for _ in range(20):
        asyncio.run(use())
    gc.collect()
    assert _Closable.closed == 20 and len(cache) == 0
    assert all(ref() is None for ref in loops)


def test_a_loop_closed_without_shutdown_is_dropped_at_the_next_access() -> None:
    cache: PerLoop[object] = PerLoop(object)
    loop = asyncio.new_event_loop()

    async def get() -> object:
        return cache.get()

    loop.run_until_complete(get())
    loop.close()  # no shutdown_asyncgens
    asyncio.run(get())
    assert len(cache) == 0


def test_agent_caches_follow_their_loops_and_threads() -> None:
    agent = ChatAgent(model=ScriptedModel([reply("x")] * 13))

    async def chat() -> None:
        await agent.chat_async("hi")

    for _ in range(10):
        asyncio.run(chat())
    threads = [threading.Thread(target=lambda: agent.chat("hi")) for _ in range(3)]
    for t in threads:
        t.start()
        t.join()
    gc.collect()
    assert len(agent._limiters) == 0 and len(agent.turns._locks) == 0


def test_sync_calls_from_threads_register_no_exit_hook_per_thread() -> None:
    import atexit

    agent = ChatAgent(model=ScriptedModel([reply("x")] * 11))
    first = threading.Thread(target=lambda: agent.chat("hi"))  # weakref.finalize's own single exit hook
    first.start()
    first.join()
    before = atexit._ncallbacks()
    for _ in range(10):
        thread = threading.Thread(target=lambda: agent.chat("hi"))
        thread.start()
        thread.join()
    gc.collect()
    assert atexit._ncallbacks() == before


@pytest.mark.parametrize("which", ["panel", "map"])
def test_a_closed_widget_is_freed(which: str) -> None:
    """anywidget keeps every instance whose _esm/_css is a Path alive (manzt/anywidget#929): ours are text."""
    if which == "panel":
        from menglong_magic.ui.panel import PanelWidget as widget_class
    else:
        from menglong_magic.ui.mapview import _map_widget_class

        widget_class = _map_widget_class()
    assert isinstance(widget_class._esm, str) and isinstance(widget_class._css, str)
    refs = []
    for _ in range(5):
        widget = widget_class()
        refs.append(weakref.ref(widget))
        widget.close()
        del widget
    gc.collect()
    assert all(ref() is None for ref in refs)
