"""The embedded model's answers stay with what the question and the tools said (no server needed here)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from menglong_magic.models.local import arguments_grammar
from menglong_magic.models.local.answer import grounding_problem, order_arguments, results_answer
from menglong_magic.models.local.model import _prompt_history

LENGTH = {
    "type": "object",
    "properties": {"value": {"type": "number"}, "from_unit": {"type": "string"}, "to_unit": {"type": "string"}},
    "required": ["value", "from_unit", "to_unit"],
}


@pytest.mark.parametrize(
    ("answer", "question", "results"),
    [
        ("The answer is 10.", "What is the capital of Japan?", ["Tokyo"]),  # a number nobody said
        ("The capital of France is Paris.", "What is the capital of Italy?", ["Rome"]),  # an earlier answer
        ("Paris, France.", "What is the weather in Paris?", ["It is 18 degrees and sunny in Paris."]),
        ("The weather in Paris is quite beautiful.", "What is the weather in Paris?", ["Paris: 21 degrees."]),
        ("It is 42 kilometers.", "How many kilometers is 26.2 miles?", ["42.16"]),  # a rounded-off result
        ("Tokyo is the capital, and it has 14 million people.", "Capital of Japan?", ["Tokyo"]),
        ("Nairobi.", "What is the capital of Kenya, and how many feet is 100 meters?", ["Nairobi", "328.08"]),
        ("", "Capital of Japan?", ["Tokyo"]),
    ],
)
def test_an_answer_with_something_the_tools_did_not_say_is_not_grounded(
    answer: str, question: str, results: list[str]
) -> None:
    assert grounding_problem(answer, question, results)


@pytest.mark.parametrize(
    ("answer", "question", "results"),
    [
        ("The capital of Japan is Tokyo.", "What is the capital of Japan?", ["Tokyo"]),
        ("26.2 miles is 42.16 kilometers.", "How many kilometers is 26.2 miles?", ["42.164"]),
        ("It is 21.0 degrees and sunny in Paris.", "Weather in Paris?", ["Paris: 21 degrees and sunny."]),
        ("It is 1,234 meters, and Nairobi is the capital of Kenya.", "Capital of Kenya and 1234 m?", ["Nairobi"]),
        ("The time in London is 14:30.", "What time is it in London?", ["It is 14:30 in London."]),
    ],
)
def test_an_answer_stating_the_results_in_the_question_s_words_is_grounded(
    answer: str, question: str, results: list[str]
) -> None:
    assert grounding_problem(answer, question, results) is None


def test_an_answer_repeating_the_prompt_s_list_of_calls_is_not_grounded() -> None:
    answer = '- get_weather({"city": "Madrid"}): Madrid: 16 degrees and sunny.'
    assert grounding_problem(answer, "Weather in Madrid?", ["Madrid: 16 degrees and sunny."], ("get_weather",))
    assert grounding_problem("Tool results: Madrid 16", "Weather in Madrid?", ["Madrid: 16 degrees."])
    assert grounding_problem("Madrid: 16 degrees and sunny.", "Weather in Madrid?", ["Madrid: 16 degrees and sunny."],
                             ("get_weather",)) is None  # fmt: skip


def test_the_results_answer_states_every_result_and_passes_the_check() -> None:
    calls: list[tuple[str, dict[str, Any], str]] = [
        ("capital_of", {"country": "Kenya"}, "Nairobi"),
        ("convert_length", {"value": 100.0, "from_unit": "meters", "to_unit": "feet"}, "328.08"),
        ("get_weather", {"city": "Paris"}, "It is 18 degrees and sunny in Paris."),
    ]
    text = results_answer(calls)
    assert text == (
        "Capital of (Kenya): Nairobi. Convert length (100, meters, feet): 328.08. It is 18 degrees and sunny in Paris."
    )
    question = "What is the capital of Kenya, how many feet is 100 meters, and the weather in Paris?"
    assert grounding_problem(text, question, [r for _, _, r in calls]) is None


@pytest.mark.parametrize(
    ("question", "given", "expected"),
    [
        ("How many kilometers is 26.2 miles?", ("kilometers", "miles"), ("miles", "kilometers")),
        ("How many kilometers is 26.2 miles?", ("miles", "kilometers"), ("miles", "kilometers")),
        ("how many feet is 100 meters", ("feet", "meters"), ("meters", "feet")),
        ("Convert 5 miles to kilometers.", ("kilometers", "miles"), ("miles", "kilometers")),
        ("What is 3 feet in inches?", ("inches", "feet"), ("feet", "inches")),
        ("Convert from yards into meters: 7", ("meters", "yards"), ("yards", "meters")),
        ("Convert 50 dollars to euros.", ("dollars", "euros"), ("dollars", "euros")),
    ],
)
def test_from_and_to_arguments_follow_the_question(
    question: str, given: tuple[str, str], expected: tuple[str, str]
) -> None:
    arguments = {"value": 1, "from_unit": given[0], "to_unit": given[1]}
    ordered = order_arguments(arguments, LENGTH, question)
    assert (ordered["from_unit"], ordered["to_unit"]) == expected
    assert arguments["from_unit"] == given[0]  # the caller's dict is unchanged


@pytest.mark.parametrize(
    ("question", "given", "expected"),
    [
        ("how many feet is 100 meters", ("meters", "meters"), ("meters", "feet")),
        ("Convert 5 miles to kilometers.", ("kilometers", "kilometers"), ("miles", "kilometers")),
        ("miles and kilometers", ("miles", "miles"), ("miles", "miles")),  # nothing to go by: left alone
    ],
)
def test_a_from_to_pair_naming_one_unit_twice_takes_the_other_from_the_question(
    question: str, given: tuple[str, str], expected: tuple[str, str]
) -> None:
    ordered = order_arguments({"value": 1, "from_unit": given[0], "to_unit": given[1]}, LENGTH, question)
    assert (ordered["from_unit"], ordered["to_unit"]) == expected


@pytest.mark.parametrize(
    "names", [("source", "target"), ("from_currency", "to_currency"), ("source_language", "target_language")]
)
def test_other_from_to_pairs_are_ordered_too(names: tuple[str, str]) -> None:
    schema = {"properties": {names[0]: {"type": "string"}, names[1]: {"type": "string"}, "amount": {}}}
    ordered = order_arguments({names[0]: "euros", names[1]: "dollars"}, schema, "How many euros is 20 dollars?")
    assert (ordered[names[0]], ordered[names[1]]) == ("dollars", "euros")
    unclear = order_arguments({names[0]: "euros", names[1]: "dollars"}, schema, "euros or dollars")
    assert (unclear[names[0]], unclear[names[1]]) == ("euros", "dollars")  # no evidence: left alone


def _string_starts(grammar: str) -> set[str]:
    """The words a copied string may start with, read from the grammar's rules."""
    rules = dict(line.split(" ::= ", 1) for line in grammar.splitlines() if " ::= " in line)
    starts = re.findall(r"cw-\d+", rules["copied-string"])
    return {re.match(r'"((?:[^"\\]|\\.)*)"', rules[s]).group(1) for s in starts}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("question", "tool", "schema", "allowed", "refused"),
    [
        ("What is the capital of Kenya", "capital_of", {"properties": {"country": {"type": "string"}}},
         {"Kenya"}, {"What", "is", "the", "capital", "of"}),
        ("how many feet is 100 meters", "convert_length", LENGTH, {"feet", "meters"}, {"how", "many", "is", "100"}),
        ("Who is Ada Lovelace", "lookup", {"properties": {"topic": {"type": "string"}}}, {"Ada", "Lovelace"},
         {"Who", "is"}),
    ],
)  # fmt: skip
def test_copied_values_do_not_start_with_question_words_the_tool_s_name_or_the_amount(
    question: str, tool: str, schema: dict[str, Any], allowed: set[str], refused: set[str]
) -> None:
    starts = _string_starts(arguments_grammar(schema, copy_from=question, tool_name=tool))
    assert allowed <= starts and not (refused & starts)


def test_the_answer_prompt_leaves_out_earlier_answers_and_tool_results() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "function": {"name": "capital_of"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "Paris"},
        {"role": "assistant", "content": "The capital of France is Paris."},
        {"role": "user", "content": "What is the capital of Italy?"},
    ]
    assert _prompt_history(messages, 0) == [messages[0], messages[-1]]
    with_one = _prompt_history(messages, 1)
    assert with_one == [messages[0], messages[1], messages[4], messages[-1]]  # no tool call, no tool result


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        ('{"temperature_c": 18.0, "sky": "sunny", "windy": false}',
         "Get weather (Paris): temperature c 18; sky sunny; windy no."),
        ('["Nairobi", "Mombasa", "Kisumu"]', "Get weather (Paris): Nairobi, Mombasa, Kisumu."),
        ('{"city": "Paris", "days": [{"t": 18}, {"t": 20}], "alert": null}',
         'Get weather (Paris): city Paris; days [{"t": 18}, {"t": 20}]; alert none.'),
        ("{}", "Get weather (Paris): (empty)."),
        ("{not json, as a tool may print", "Get weather (Paris): {not json, as a tool may print."),
        ("[1, 2.5, 3.0]", "Get weather (Paris): 1, 2.5, 3."),
    ],
    ids=["object", "list", "nested", "empty", "not-json", "numbers"],
)
def test_a_json_result_reads_as_words_in_the_results_answer(result: str, expected: str) -> None:
    assert results_answer([("get_weather", {"city": "Paris"}, result)]) == expected


def test_a_json_object_answer_still_states_every_fact() -> None:
    result = '{"temperature_c": 18, "sky": "sunny"}'
    text = results_answer([("get_weather", {"city": "Paris"}, result)])
    assert "{" not in text and '"' not in text
    assert grounding_problem(text, "What is the weather in Paris?", [result]) is None


def test_an_answer_that_leaves_out_a_result_is_told_in_words() -> None:
    """The note quotes the result a person reads: a JSON object as words, a long one cut at a word."""
    problem = grounding_problem("The weather in Paris is sunny, and the count is 6.", "Weather in Paris? Count words.",
                                ['{"city": "Paris", "sky": "sunny", "celsius": 21}', "6"])
    assert problem == "it leaves out the 21 of the tool result “city Paris; sky sunny; celsius 21”"
    several = grounding_problem("It is warm.", "Weather?", ['{"celsius": 21, "wind": 5}'])
    assert several == "it gives none of the numbers of the tool result “celsius 21; wind 5”"
    words = grounding_problem("It is done.", "Look it up.", ["Saturn"])
    assert words == "it leaves out the tool result “Saturn”"
    long = grounding_problem("It is done.", "Look it up.", ["alpha " * 50 + "42"])
    assert long is not None and long.endswith(" …”") and len(long) < 180 and "{" not in long


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (("last_error", {}, "Last error: KeyError: 'pear'"), "Last error: KeyError: 'pear'."),
        (("last_error", {}, "last error: none in this kernel."), "last error: none in this kernel."),
        (("capital_of", {"country": "Peru"}, "Lima."), "Capital of (Peru): Lima."),
        (("shout", {"word": "hey"}, "HEY!"), "Shout (hey): HEY!"),
        (("get_weather", {"city": "Paris"}, "Weather: sunny"), "Get weather (Paris): Weather: sunny."),
    ],
    ids=["label-repeated", "label-lowercase", "own-full-stop", "own-exclamation", "other-label"],
)
def test_a_result_that_names_itself_or_ends_its_sentence_is_not_labelled_or_stopped_twice(
        call: tuple[str, dict[str, Any], str], expected: str) -> None:
    assert results_answer([call]) == expected
