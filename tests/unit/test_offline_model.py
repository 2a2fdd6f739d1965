"""The offline demo model's string arguments: real quotes only (not apostrophes), names, phrases shared by tools."""

from __future__ import annotations

import json

import pytest

from menglong_magic import ChatAgent, tool
from menglong_magic.models import OfflineModel
from menglong_magic.models.base import ModelRequest
from menglong_magic.models.offline import _candidate_numbers, _candidate_strings, example_arguments


@tool
def weather(city: str) -> str:
    """Current weather for a city."""
    return f"sunny in {city}"


@tool
def local_time(city: str) -> str:
    """Local time in a city."""
    return f"noon in {city}"


@tool
def word_count(text: str) -> int:
    """Count the words in a text."""
    return len(text.split())


async def _arguments(message: str, *tools: object) -> dict[str, dict[str, object]]:
    """The arguments the offline model sends to each tool for this message (through a real agent run)."""
    result = await ChatAgent(model="offline", mode="auto", tools=list(tools)).arun(message)
    assert result.stop_reason == "completed"
    return {c.name: c.arguments for c in result.tool_calls}


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        # the issue's example: the apostrophe of What's opened a phrase ending at the quote before Paris
        ("What's the weather in 'Paris'?", ["Paris"]),
        ("What's the weather in Paris?", ["Paris"]),
        ("I don't know what's in 'New York' or \"Lyon\"", ["New York", "Lyon"]),
        # a closing-looking apostrophe with no opening quote (plural possessive) is not a quote
        ("What's the weather in Paris' suburbs and in Lyon?", ["Paris", "Lyon"]),
        ("It's the students' books, not 'Ana's'", ["Ana's"]),
        ("Meet Mr O'Brien and Jean-Luc in Paris's centre", ["Mr O'Brien", "Jean-Luc", "Paris"]),
        ("\u2018Paris\u2019 and \u201cRome\u201d \u2014 what\u2019s up", ["Paris", "Rome"]),
        ("He said \"it's 'fine'\" to Tom", ["it's 'fine'", "Tom"]),
        ("'tis the weather in Rome", ["Rome"]),  # an opening quote that never closes quotes nothing
        ("a 'b\nc' d", []),  # quotes do not span lines
        ("Paris is nice. London too? Yes Berlin", ["Berlin"]),  # sentence starts are grammar, not names
        ("What is the weather in Paris, and how many words are in 'to be or not to be'?",
         ["to be or not to be", "Paris"]),
        ("do it", []),
    ],
)
def test_candidate_strings(message: str, expected: list[str]) -> None:
    assert _candidate_strings(message) == expected


async def test_apostrophe_is_not_a_quote_in_a_run() -> None:
    assert await _arguments("What's the weather in 'Paris'?", weather) == {"weather": {"city": "Paris"}}
    assert await _arguments("What's the weather in Paris?", weather) == {"weather": {"city": "Paris"}}
    assert await _arguments("Don't guess: what's it like in 'Oslo'?", weather) == {"weather": {"city": "Oslo"}}


async def test_several_string_tools_share_the_phrases_in_turn() -> None:
    args = await _arguments("What's the weather in Paris, and how many words are in 'to be or not to be'?",
                            word_count, weather)
    assert args == {"word_count": {"text": "to be or not to be"}, "weather": {"city": "Paris"}}


async def test_a_tool_left_without_a_phrase_reuses_the_messages_phrases() -> None:
    # the issue: the second tool received the placeholder "city"
    args = await _arguments("What's the weather and the time in 'Paris'?", weather, local_time)
    assert args == {"weather": {"city": "Paris"}, "local_time": {"city": "Paris"}}
    args = await _arguments("Weather in 'Paris' and 'Lyon', and words in Rome?", weather, local_time, word_count)
    assert args == {"weather": {"city": "Paris"}, "local_time": {"city": "Lyon"}, "word_count": {"text": "Rome"}}
    args = await _arguments("Weather in 'Paris'?", weather, local_time, word_count)
    assert args == {"weather": {"city": "Paris"}, "local_time": {"city": "Paris"}, "word_count": {"text": "Paris"}}


async def test_without_any_phrase_the_schema_example_then_the_parameter_name() -> None:
    assert await _arguments("what's the weather like?", weather) == {"weather": {"city": "city"}}
    schema = {"type": "object", "properties": {"city": {"type": "string", "examples": ["Oslo"]}}}
    assert example_arguments(schema, []) == {"city": "Oslo"}
    assert example_arguments(schema, ["Rome"]) == {"city": "Rome"}


async def test_the_tool_call_json_is_what_the_agent_receives() -> None:
    """The model's raw arguments are valid JSON with the phrase, apostrophes inside it intact."""
    spec = {"type": "function", "function": {"name": "weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    request = ModelRequest(messages=[{"role": "user", "content": "Is it raining in 'Bob's town'?"}], tools=[spec])
    response = await OfflineModel().request(request, lambda event: None)
    assert [json.loads(c.arguments) for c in response.tool_calls] == [{"city": "Bob's town"}]


def test_local_model_question_parts_ignore_apostrophes() -> None:
    from menglong_magic.models.local import question_parts

    assert question_parts("What's the weather in Paris, and what's 'to be or not to be' in words?") == [
        "What's the weather in Paris", "what's 'to be or not to be' in words"]
    assert question_parts("Count 'a, and b' please") == ["Count 'a, and b' please"]  # a quotation is never split


@tool
def sentence_weather(city: str) -> str:
    """Current weather for a city, as a sentence."""
    return f"It is 18 degrees and sunny in {city}."


@tool
def exclaim(city: str) -> str:
    """A greeting for a city."""
    return f"Hello {city}!"


@pytest.mark.parametrize(("tools", "ending"), [
    ([weather], "weather returned sunny in Paris."),  # a result without a full stop gets one
    ([sentence_weather], "sentence_weather returned It is 18 degrees and sunny in Paris."),
    ([exclaim], "exclaim returned Hello Paris!"),
    ([sentence_weather, weather], "weather returned sunny in Paris."),
])
async def test_the_summary_ends_with_one_full_stop(tools: list, ending: str) -> None:
    answer = await ChatAgent(model=OfflineModel(), tools=tools, mode="auto").chat_async("Weather in 'Paris'?")
    assert answer.endswith(ending), answer
    assert not answer.endswith(("..", "!.", "?."))


@tool
def add(a: float, b: float) -> float:
    """Add two numbers."""
    return a + b


@tool
def repeat(word: str, times: int) -> str:
    """Repeat a word."""
    return word * times


def test_candidate_numbers() -> None:
    assert _candidate_numbers("Add 2 and 3.5, then -4; not v2, 3rd or 1.2.3") == [2.0, 3.5, -4.0]


@pytest.mark.parametrize(("message", "tools", "expected"), [
    ("Add 2 and 3", [add], {"add": {"a": 2.0, "b": 3.0}}),
    ("What is 17 plus 25.5?", [add], {"add": {"a": 17.0, "b": 25.5}}),
    ("Add 7 to itself", [add], {"add": {"a": 7.0, "b": 7.0}}),  # the numbers start again from the first
    ("Repeat 'ha' 3 times", [repeat], {"repeat": {"word": "ha", "times": 3}}),
    ("Repeat 'ha' 2.5 times", [repeat], {"repeat": {"word": "ha", "times": 2}}),  # not an integer: the default
    ("Add some numbers", [add], {"add": {"a": 1.5, "b": 1.5}}),  # none in the message: the schema's example
])
async def test_number_arguments_come_from_the_message(message: str, tools: list, expected: dict) -> None:
    assert await _arguments(message, *tools) == expected


def test_numbers_outside_the_schema_bounds_are_not_taken() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 10, "maximum": 20}}}
    assert example_arguments(schema, [], [5.0]) == {"n": 20}
    assert example_arguments(schema, [], [12.0]) == {"n": 12}
