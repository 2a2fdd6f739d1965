"""Evaluation of the embedded local model (SmolLM2-135M via llama.cpp) as a small tool-calling agent.

Runs 24 questions over 6 tools — one-tool, two-tool and no-tool questions — through ``ChatAgent.arun``
with the real local server, and scores each run: right when the set of tools called equals the expected
set, each call's key arguments contain the expected text (case-insensitive), and the run completed with a
non-empty answer. Also counts answers that quote every tool result's number ("honest numbers").
Prints one row per question, the score, and the median / p90 time per question (the whole run: routing,
argument filling, tools, answer).

    python bench/eval_local_model.py            # the table and the summary
    python bench/eval_local_model.py --json     # the summary as JSON too
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
    return f"{city}: 21 degrees and sunny."


@tool
def get_time(city: str) -> str:
    """Current local time in a city.

    Args:
        city: The city name.
    """
    return f"It is 14:30 in {city}."


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


TOOLS = [get_weather, get_time, count_words, calculate, lookup, convert_currency]

#: (question, {tool: {argument: text the argument must contain}}); {} means: answer without a tool.
QUESTIONS: list[tuple[str, dict[str, dict[str, str]]]] = [
    ("What is the weather in Paris?", {"get_weather": {"city": "paris"}}),
    ("Is it raining in Tokyo right now?", {"get_weather": {"city": "tokyo"}}),
    ("How many words are in 'the quick brown fox jumps'?", {"count_words": {"text": "quick brown fox jumps"}}),
    ("What is 17 * 23?", {"calculate": {"expression": "17 * 23"}}),
    ("Calculate 1234 + 5678.", {"calculate": {"expression": "1234 + 5678"}}),
    ("What time is it in London?", {"get_time": {"city": "london"}}),
    ("What is the local time in Sydney?", {"get_time": {"city": "sydney"}}),
    ("Look up Marie Curie in the encyclopedia.", {"lookup": {"topic": "curie"}}),
    ("Who is Ada Lovelace?", {"lookup": {"topic": "lovelace"}}),
    ("Convert 50 dollars to euros.", {"convert_currency": {"amount": "50", "currency": "euro"}}),
    ("What is the weather in Paris, and how many words are in 'to be or not to be'?",
     {"get_weather": {"city": "paris"}, "count_words": {"text": "to be or not to be"}}),
    ("What time is it in Berlin, and what is the weather in Berlin?",
     {"get_time": {"city": "berlin"}, "get_weather": {"city": "berlin"}}),
    ("What is 12 * 12, and what is the weather in Rome?",
     {"calculate": {"expression": "12 * 12"}, "get_weather": {"city": "rome"}}),
    ("Look up Alan Turing and tell me the time in London.",
     {"lookup": {"topic": "turing"}, "get_time": {"city": "london"}}),
    ("How many words are in 'hello big world', and what is 3 + 4?",
     {"count_words": {"text": "hello big world"}, "calculate": {"expression": "3 + 4"}}),
    ("What's the weather in Madrid and the time in New York?",
     {"get_weather": {"city": "madrid"}, "get_time": {"city": "new york"}}),
    ("Convert 20 dollars to yen and tell me the weather in Osaka.",
     {"convert_currency": {"amount": "20", "currency": "yen"}, "get_weather": {"city": "osaka"}}),
    ("Hello!", {}),
    ("Thank you, that's all.", {}),
    ("Write a haiku about the sea.", {}),
    ("Say hello in French.", {}),
    ("What is your name?", {}),
    ("Tell me a joke.", {}),
    ("Good morning, how are you?", {}),
]  # fmt: skip


@dataclasses.dataclass
class Outcome:
    question: str
    expected: dict[str, dict[str, str]]
    calls: list[tuple[str, Any]]
    answer: str
    completed: bool
    seconds: float
    right: bool
    numbers_quoted: bool | None  # None: no tool result with a number


def score(expected: dict[str, dict[str, str]], calls: list[tuple[str, Any]], completed: bool, answer: str) -> bool:
    """Right tools (as a set, each once), key arguments containing the expected text, and an answer."""
    if not completed or not answer.strip():
        return False
    if sorted(name for name, _ in calls) != sorted(expected):
        return False
    for name, arguments in calls:
        if not isinstance(arguments, dict):
            return False
        for key, wanted in expected[name].items():
            if wanted.lower() not in str(arguments.get(key, "")).lower():
                return False
    return True


def _numbers(text: str) -> set[str]:
    return set(re.findall(r"\d+(?:[.:]\d+)?", text))


async def run_one(agent: ChatAgent, question: str, expected: dict[str, dict[str, str]]) -> Outcome:
    agent.clear_context()
    started = time.perf_counter()
    result = await agent.arun(question)
    seconds = time.perf_counter() - started
    records = [c for it in result.iterations for c in it.tool_calls]
    calls = [(c.name, c.arguments) for c in records]
    answer = result.final_output or ""
    wanted = set().union(*(_numbers(str(c.result)) for c in records if c.result)) if records else set()
    quoted = None if not wanted else wanted <= _numbers(answer)
    right = score(expected, calls, result.task_completed, answer)
    return Outcome(question, expected, calls, answer, result.task_completed, seconds, right, quoted)


async def evaluate(model: Any = "local", questions: list[tuple[str, dict[str, dict[str, str]]]] | None = None,
                   echo: bool = True) -> dict[str, Any]:  # fmt: skip
    """Run the evaluation; returns the summary (and prints the table when ``echo``)."""
    agent = ChatAgent(model=model, tools=TOOLS, mode="auto", max_iterations=4, stream=False)
    start = getattr(agent.model, "start", None)
    if start is not None:
        await start()  # server start-up is not part of any question's time
    await agent.arun("Hello")  # warm-up (first prompt evaluation), not scored
    outcomes = []
    for question, expected in questions or QUESTIONS:
        outcome = await run_one(agent, question, expected)
        outcomes.append(outcome)
        if echo:
            calls = ", ".join(f"{n}({json.dumps(a, ensure_ascii=False)})" for n, a in outcome.calls) or "-"
            print(f"{'ok ' if outcome.right else 'BAD'} {outcome.seconds:5.2f}s  {question}\n"
                  f"        calls: {calls}\n        answer: {outcome.answer[:160]!r}")  # fmt: skip
    times = sorted(o.seconds for o in outcomes)
    kinds = {"no-tool": 0, "one-tool": 1, "two-tool": 2}
    by_kind = {k: [o for o in outcomes if len(o.expected) == n] for k, n in kinds.items()}
    numbered = [o for o in outcomes if o.numbers_quoted is not None]
    summary = {
        "questions": len(outcomes),
        "right": sum(o.right for o in outcomes),
        "score": sum(o.right for o in outcomes) / len(outcomes),
        "by_kind": {k: f"{sum(o.right for o in v)}/{len(v)}" for k, v in by_kind.items()},
        "median_s": statistics.median(times),
        "p90_s": times[min(len(times) - 1, round(0.9 * (len(times) - 1)))],
        "max_s": times[-1],
        "answers_quoting_tool_numbers": f"{sum(bool(o.numbers_quoted) for o in numbered)}/{len(numbered)}",
        "tools": len(TOOLS),
    }
    if echo:
        print(f"\nscore {summary['right']}/{summary['questions']} = {summary['score']:.0%}  "
              f"({', '.join(f'{k} {v}' for k, v in summary['by_kind'].items())}); "
              f"time per question: median {summary['median_s']:.2f}s, p90 {summary['p90_s']:.2f}s, "
              f"max {summary['max_s']:.2f}s; answers quoting the tools' numbers: "
              f"{summary['answers_quoting_tool_numbers']}")  # fmt: skip
    summary["outcomes"] = outcomes
    return summary


def main() -> None:
    summary = asyncio.run(evaluate())
    if "--json" in sys.argv:
        print(json.dumps({k: v for k, v in summary.items() if k != "outcomes"}, indent=2))


if __name__ == "__main__":
    main()
