"""Evaluation of the embedded local model (SmolLM2-135M via llama.cpp) as a small tool-calling agent.

Runs single questions (one-tool, two-tool and no-tool) and multi-turn conversations (a series of different
questions in one conversation, history kept) over 8 tools through ``ChatAgent.arun`` with the real local
server, and scores each answer three ways, reported separately:

- right tool: the set of tools called equals the expected set (each once);
- right arguments: right tool, and each call's key arguments contain the expected text (case-insensitive;
  for from/to pairs, in the question's direction);
- right final answer: the run completed with an answer that states the expected values (e.g. "Nairobi",
  "42.16"), contains no number that is neither in the question nor in a tool result, and names no place or
  person of the evaluation that is neither in the question nor in a tool result (e.g. an earlier answer's
  city: the 135M model used to parrot earlier answers).

Prints one row per question, the three figures, and the median / p90 time per question (the whole run:
routing, argument filling, tools, answer).

    python bench/eval_local_model.py            # the table and the summary
    python bench/eval_local_model.py --json     # the summary as JSON too
    python bench/eval_local_model.py --singles  # only the single questions (or --conversations)
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import statistics
import sys
import time
from typing import Any

from menglong_magic import ChatAgent, tool


@tool
def get_weather(city: str) -> str:
    """Current weather for a city: temperature, sky, rain or snow.

    Args:
        city: The city name.
    """
    return f"{city}: {10 + len(city)} degrees and sunny."  # differs by city: a parroted answer shows


@tool
def get_time(city: str) -> str:
    """Current local time in a city.

    Args:
        city: The city name.
    """
    return f"It is {8 + len(city)}:30 in {city}."


@tool
def count_words(text: str) -> int:
    """Count how many words are in a text.

    Args:
        text: The text whose words to count.
    """
    return len(text.split())


@tool
def calculate(expression: str) -> str:
    """Calculate an arithmetic expression with + - * / such as 2 + 3 * 4.

    Args:
        expression: The arithmetic expression.
    """
    if not re.fullmatch(r"[0-9+\-*/(). ]+", expression):
        return "not an arithmetic expression"
    try:
        return str(eval(expression, {"__builtins__": {}}))  # digits and operators only
    except (SyntaxError, ZeroDivisionError):
        return "cannot calculate that"


@tool
def lookup(topic: str) -> str:
    """Look up facts in an encyclopedia about who someone is or what a place or thing is.

    Args:
        topic: The person, place or thing.
    """
    return f"{topic}: a famous subject with a long encyclopedia entry."


@tool
def convert_currency(amount: float, currency: str) -> str:
    """Convert an amount of money in dollars to another currency (euros, yen, pounds).

    Args:
        amount: The amount in dollars.
        currency: The target currency.
    """
    return f"{amount} dollars is {round(amount * 0.9, 2)} {currency}."


_METERS = {"meter": 1.0, "kilometer": 1000.0, "mile": 1609.344, "foot": 0.3048, "feet": 0.3048, "inch": 0.0254,
           "inches": 0.0254, "yard": 0.9144, "centimeter": 0.01}  # fmt: skip


def _unit(name: str) -> float | None:
    name = name.strip().lower()
    return _METERS.get(name) or _METERS.get(name.rstrip("s"))


@tool
def convert_length(value: float, from_unit: str, to_unit: str) -> str:
    """Convert a length from one unit to another: meters, kilometers, miles, feet, inches, yards.

    Args:
        value: The length to convert.
        from_unit: The unit the length is given in.
        to_unit: The unit to convert to.
    """
    source, target = _unit(from_unit), _unit(to_unit)
    if source is None or target is None:
        return f"unknown unit: {from_unit if source is None else to_unit}"
    return f"{round(value * source / target, 2):g}"


_CAPITALS = {"france": "Paris", "italy": "Rome", "japan": "Tokyo", "kenya": "Nairobi", "spain": "Madrid",
             "germany": "Berlin", "canada": "Ottawa", "peru": "Lima", "egypt": "Cairo"}  # fmt: skip


@tool
def capital_of(country: str) -> str:
    """The capital city of a country.

    Args:
        country: The country.
    """
    return _CAPITALS.get(country.strip().lower(), f"unknown country: {country}")


TOOLS = [get_weather, get_time, count_words, calculate, lookup, convert_currency, convert_length, capital_of]

#: Places and people of this evaluation: an answer naming one that is neither in its question nor in its
#: tool results says something nobody told it (often an earlier answer, repeated).
KNOWN_NAMES = frozenset(
    """Paris Tokyo London Sydney Berlin Rome Madrid Osaka York Curie Lovelace Turing France Italy Japan Kenya
    Nairobi Spain Germany Canada Ottawa Peru Lima Egypt Cairo""".split()
)

Expected = dict[str, dict[str, str]]
#: (question, {tool: {argument: text the argument must contain}}, texts the answer must contain);
#: {} means: answer without a tool.
Question = tuple[str, Expected, tuple[str, ...]]

QUESTIONS: list[Question] = [
    ("What is the weather in Paris?", {"get_weather": {"city": "paris"}}, ("15",)),
    ("Is it raining in Tokyo right now?", {"get_weather": {"city": "tokyo"}}, ("15",)),
    ("How many words are in 'the quick brown fox jumps'?", {"count_words": {"text": "quick brown fox jumps"}}, ("5",)),
    ("What is 17 * 23?", {"calculate": {"expression": "17 * 23"}}, ("391",)),
    ("Calculate 1234 + 5678.", {"calculate": {"expression": "1234 + 5678"}}, ("6912",)),
    ("What time is it in London?", {"get_time": {"city": "london"}}, ("14:30",)),
    ("What is the local time in Sydney?", {"get_time": {"city": "sydney"}}, ("14:30",)),
    ("Look up Marie Curie in the encyclopedia.", {"lookup": {"topic": "curie"}}, ("Curie",)),
    ("Who is Ada Lovelace?", {"lookup": {"topic": "lovelace"}}, ("Lovelace",)),
    ("Convert 50 dollars to euros.", {"convert_currency": {"amount": "50", "currency": "euro"}}, ("45",)),
    ("How many kilometers is 26.2 miles?",
     {"convert_length": {"value": "26.2", "from_unit": "mile", "to_unit": "kilometer"}}, ("42.16",)),
    ("Convert 5 miles to kilometers.",
     {"convert_length": {"value": "5", "from_unit": "mile", "to_unit": "kilometer"}}, ("8.05",)),
    ("How many meters is 12 feet?",
     {"convert_length": {"value": "12", "from_unit": "feet", "to_unit": "meter"}}, ("3.66",)),
    ("What is the capital of Japan?", {"capital_of": {"country": "japan"}}, ("Tokyo",)),
    ("What is the capital of Germany?", {"capital_of": {"country": "germany"}}, ("Berlin",)),
    ("What is the weather in Paris, and how many words are in 'to be or not to be'?",
     {"get_weather": {"city": "paris"}, "count_words": {"text": "to be or not to be"}}, ("15", "6")),
    ("What time is it in Berlin, and what is the weather in Berlin?",
     {"get_time": {"city": "berlin"}, "get_weather": {"city": "berlin"}}, ("14:30", "16")),
    ("What is 12 * 12, and what is the weather in Rome?",
     {"calculate": {"expression": "12 * 12"}, "get_weather": {"city": "rome"}}, ("144", "14")),
    ("Look up Alan Turing and tell me the time in London.",
     {"lookup": {"topic": "turing"}, "get_time": {"city": "london"}}, ("Turing", "14:30")),
    ("How many words are in 'hello big world', and what is 3 + 4?",
     {"count_words": {"text": "hello big world"}, "calculate": {"expression": "3 + 4"}}, ("3", "7")),
    ("What's the weather in Madrid and the time in New York?",
     {"get_weather": {"city": "madrid"}, "get_time": {"city": "new york"}}, ("16", "16:30")),
    ("Convert 20 dollars to yen and tell me the weather in Osaka.",
     {"convert_currency": {"amount": "20", "currency": "yen"}, "get_weather": {"city": "osaka"}}, ("18", "15")),
    ("What is the capital of Kenya, and how many feet is 100 meters?",
     {"capital_of": {"country": "kenya"}, "convert_length": {"value": "100", "from_unit": "meter", "to_unit": "feet"}},
     ("Nairobi", "328.08")),
    ("Hello!", {}, ()),
    ("Thank you, that's all.", {}, ()),
    ("Write a haiku about the sea.", {}, ()),
    ("Say hello in French.", {}, ()),
    ("What is your name?", {}, ()),
    ("Tell me a joke.", {}, ()),
    ("Good morning, how are you?", {}, ()),
]  # fmt: skip

#: Conversations: each a series of different questions asked one after another, history kept.
CONVERSATIONS: list[list[Question]] = [
    [("What is the capital of France?", {"capital_of": {"country": "france"}}, ("Paris",)),
     ("What is the capital of Italy?", {"capital_of": {"country": "italy"}}, ("Rome",)),
     ("What is the capital of Japan?", {"capital_of": {"country": "japan"}}, ("Tokyo",)),
     ("How many kilometers is 26.2 miles?",
      {"convert_length": {"value": "26.2", "from_unit": "mile", "to_unit": "kilometer"}}, ("42.16",))],
    [("What is the weather in Paris?", {"get_weather": {"city": "paris"}}, ("15",)),
     ("How many words are in 'to be or not to be'?", {"count_words": {"text": "to be or not to be"}}, ("6",)),
     ("What is the weather in Rome?", {"get_weather": {"city": "rome"}}, ("14",)),
     ("Hello!", {}, ())],
    [("Convert 50 dollars to euros.", {"convert_currency": {"amount": "50", "currency": "euro"}}, ("45",)),
     ("What is 17 * 23?", {"calculate": {"expression": "17 * 23"}}, ("391",)),
     ("What is the capital of Kenya?", {"capital_of": {"country": "kenya"}}, ("Nairobi",)),
     ("Thank you, that's all.", {}, ())],
    [("How many miles is 10 kilometers?",
      {"convert_length": {"value": "10", "from_unit": "kilometer", "to_unit": "mile"}}, ("6.21",)),
     ("How many inches is 3 feet?", {"convert_length": {"value": "3", "from_unit": "feet", "to_unit": "inch"}},
      ("36",)),
     ("What time is it in Tokyo?", {"get_time": {"city": "tokyo"}}, ("13:30",)),
     ("What is the capital of Spain?", {"capital_of": {"country": "spain"}}, ("Madrid",))],
]  # fmt: skip


@dataclasses.dataclass
class Outcome:
    question: str
    expected: Expected
    calls: list[tuple[str, Any]]
    answer: str
    completed: bool
    seconds: float
    right_tool: bool
    right_arguments: bool
    right_answer: bool
    conversation: int | None  # index into CONVERSATIONS, None for a single question
    problem: str = ""  # why the answer is not right


def score_calls(expected: Expected, calls: list[tuple[str, Any]]) -> tuple[bool, bool]:
    """(right tool, right arguments): the tools as a set, each once; key arguments containing the text."""
    if sorted(name for name, _ in calls) != sorted(expected):
        return False, False
    for name, arguments in calls:
        if not isinstance(arguments, dict):
            return True, False
        for key, wanted in expected[name].items():
            if wanted.lower() not in str(arguments.get(key, "")).lower():
                return True, False
    return True, True


def _numbers(text: str) -> set[str]:
    """Numbers as written, with "21.0" read as "21" (a time of day stays "14:30")."""
    found = set()
    for number in re.findall(r"(?<![\w.])\d+(?:[.:]\d+)?", text):
        found.add(number[:-2] if number.endswith(".0") else number)
    return found


def answer_problem(answer: str, question: str, results: list[str], wanted: tuple[str, ...], completed: bool) -> str:
    """Why ``answer`` is not a right final answer ("" when it is): see the module's docstring."""
    if not completed or not answer.strip():
        return "no answer"
    source = " ".join([question, *results])
    said = _numbers(answer)
    missing = [w for w in wanted if (w not in said if re.fullmatch(r"[\d.:]+", w) else w.lower() not in answer.lower())]
    if missing:
        return f"does not state {missing}"
    invented = sorted(_numbers(answer) - _numbers(source))
    if invented:
        return f"numbers not in the question or results: {invented}"
    names = sorted(n for n in KNOWN_NAMES if re.search(rf"\b{n}\b", answer) and n.lower() not in source.lower())
    if names:
        return f"names not in the question or results: {names}"
    return ""


def score(expected: Expected, calls: list[tuple[str, Any]], completed: bool, answer: str) -> bool:
    """Right tools and arguments, and an answer (the earlier, looser figure; kept for comparison)."""
    return completed and bool(answer.strip()) and score_calls(expected, calls)[1]


async def run_one(agent: ChatAgent, item: Question, conversation: int | None = None) -> Outcome:
    question, expected, wanted = item
    if conversation is None:
        agent.clear_context()
    started = time.perf_counter()
    result = await agent.arun(question)
    seconds = time.perf_counter() - started
    records = [c for it in result.iterations for c in it.tool_calls]
    calls = [(c.name, c.arguments) for c in records]
    answer = result.final_output or ""
    right_tool, right_arguments = score_calls(expected, calls)
    results = [str(c.result) for c in records if c.result is not None]
    problem = answer_problem(answer, question, results, wanted, result.task_completed)
    return Outcome(question, expected, calls, answer, result.task_completed, seconds, right_tool, right_arguments,
                   not problem, conversation, problem)  # fmt: skip


def _figure(outcomes: list[Outcome], attribute: str) -> str:
    return f"{sum(getattr(o, attribute) for o in outcomes)}/{len(outcomes)}"


async def evaluate(model: Any = "local", questions: list[Question] | None = None,
                   conversations: list[list[Question]] | None = None, echo: bool = True) -> dict[str, Any]:  # fmt: skip
    """Run the evaluation; returns the summary (and prints the table when ``echo``)."""
    agent = ChatAgent(model=model, tools=TOOLS, mode="auto", max_iterations=4, stream=False)
    start = getattr(agent.model, "start", None)
    if start is not None:
        await start()  # server start-up is not part of any question's time
    await agent.arun("Hello")  # warm-up (first prompt evaluation), not scored
    outcomes: list[Outcome] = []

    def show(outcome: Outcome) -> None:
        if not echo:
            return
        calls = ", ".join(f"{n}({json.dumps(a, ensure_ascii=False)})" for n, a in outcome.calls) or "-"
        oks = (outcome.right_tool, outcome.right_arguments, outcome.right_answer)
        marks = "".join("x" if ok else "." for ok in oks)  # tool, arguments, answer
        where = "" if outcome.conversation is None else f"[conversation {outcome.conversation + 1}] "
        wrong = f"\n        WRONG: {outcome.problem}" if outcome.problem else ""
        print(f"{marks} {outcome.seconds:5.2f}s  {where}{outcome.question}\n        calls: {calls}\n"
              f"        answer: {outcome.answer[:160]!r}{wrong}")  # fmt: skip

    for item in QUESTIONS if questions is None else questions:
        outcomes.append(await run_one(agent, item))
        show(outcomes[-1])
    for index, conversation in enumerate(CONVERSATIONS if conversations is None else conversations):
        agent.clear_context()
        for item in conversation:
            outcomes.append(await run_one(agent, item, conversation=index))
            show(outcomes[-1])
    times = sorted(o.seconds for o in outcomes)
    with_tools = [o for o in outcomes if o.expected]
    summary = {
        "questions": len(outcomes),
        "in_conversations": sum(o.conversation is not None for o in outcomes),
        "right_tool": _figure(outcomes, "right_tool"),
        "right_arguments": _figure(with_tools, "right_arguments"),
        "right_answer": _figure(outcomes, "right_answer"),
        "answer_score": sum(o.right_answer for o in outcomes) / len(outcomes),
        "answer_score_in_conversations": _figure([o for o in outcomes if o.conversation is not None], "right_answer"),
        "score": sum(score(o.expected, o.calls, o.completed, o.answer) for o in outcomes) / len(outcomes),
        "median_s": statistics.median(times),
        "p90_s": times[min(len(times) - 1, round(0.9 * (len(times) - 1)))],
        "max_s": times[-1],
        "tools": len(TOOLS),
    }
    if echo:
        print(f"\n{summary['questions']} questions ({summary['in_conversations']} of them in "
              f"{len(CONVERSATIONS if conversations is None else conversations)} conversations): "
              f"right tool {summary['right_tool']}, right arguments {summary['right_arguments']} (of the "
              f"questions needing tools), right final answer {summary['right_answer']} = "
              f"{summary['answer_score']:.0%} (in conversations {summary['answer_score_in_conversations']}); "
              f"time per question: median {summary['median_s']:.2f}s, p90 {summary['p90_s']:.2f}s, "
              f"max {summary['max_s']:.2f}s")  # fmt: skip
    summary["outcomes"] = outcomes
    return summary


def main() -> None:
    # --singles / --conversations: one part only (the whole evaluation takes long on a loaded machine).
    singles = None if "--conversations" not in sys.argv else []
    conversations = None if "--singles" not in sys.argv else []
    summary = asyncio.run(evaluate(questions=singles, conversations=conversations))
    if "--json" in sys.argv:
        print(json.dumps({k: v for k, v in summary.items() if k != "outcomes"}, indent=2))


if __name__ == "__main__":
    main()
