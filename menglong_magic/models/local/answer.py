"""Keeping the embedded model's output to what the question and the tools said.

A 135M model writes fluent sentences that need not match the tool results ("The answer is 10." after a
lookup returned "Tokyo"; "The capital of France is Paris." from an earlier turn). Its answer after tools
is kept only when it is *grounded* (:func:`grounding_problem`): every number and every capitalised name
in it comes from the question or a tool result, and it states every result. Otherwise the answer is
written from the results by a template (:func:`results_answer`). Arguments naming a direction ("from"/
"to" units, currencies, languages) are put in the question's order by :func:`order_arguments`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ...markup import end_sentence, json_container

_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:[.,:]\d+)*")
_NAME = re.compile(r"\b[A-Z][\w'-]*")
_SENTENCE_START = re.compile(r"(?:^|[.!?:;]\s+|\n\s*)[\"'“‘(]*$")
#: Capitalised words that are no names (a sentence may say "I", a day or a unit symbol).
_NOT_NAMES = frozenset({"I", "I'm", "I'll", "OK", "Ok", "Yes", "No", "AM", "PM", "UTC", "C", "F", "K"})


def _number_forms(text: str) -> set[str]:
    """The numbers of ``text`` in a canonical form ("1,234.50" → "1234.5", "21.0" → "21")."""
    forms: set[str] = set()
    for raw in _NUMBER.findall(text):
        if ":" in raw:  # a time of day: compared as written
            forms.add(raw)
            continue
        plain = raw.replace(",", "") if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", raw) else raw.replace(",", ".")
        try:
            value = float(plain)
        except ValueError:
            forms.add(raw)
            continue
        forms.add(f"{value:.10g}")
        forms.add(f"{round(value, 2):.10g}")  # 42.164... may be written 42.16
    return forms


def _names(text: str) -> list[str]:
    """Capitalised words of ``text`` that are not the first word of a sentence."""
    names = []
    for match in _NAME.finditer(text):
        if _SENTENCE_START.search(text[: match.start()]):
            continue
        word = match.group(0).rstrip("'-")
        if word.endswith("'s"):
            word = word[:-2]
        if word not in _NOT_NAMES:
            names.append(word)
    return names


def _result_facts(result: str) -> tuple[set[str], list[str]]:
    """What an answer must state of one result: its numbers; without numbers, one of its words."""
    numbers = _number_forms(result)
    words = [w for w in re.findall(r"[^\W\d_][\w'-]*", result) if len(w) > 1] if not numbers else []
    return numbers, words


def grounding_problem(answer: str, question: str, results: list[str], tools: tuple[str, ...] = ()) -> str | None:
    """Why ``answer`` is not grounded in ``question`` and the tool ``results`` (None when it is).

    Grounded: each number of the answer is a number of the question or a result (canonical forms, so
    "21.0" matches "21"); each capitalised word that does not start a sentence appears in them too (case
    aside); each result is stated: all its numbers, or (a result without numbers) one of its words; and it
    does not quote the prompt's list of calls (``get_weather({...}): ...``, ``tools``: the tools' names).
    """
    if not answer.strip():
        return "it is empty"
    copied = [name for name in tools if f"{name}(" in answer] or (["Tool results"] if "Tool results" in answer else [])
    if copied:  # the model repeated its prompt's list of calls instead of answering
        return f"it quotes the prompt ({copied[0]})"
    source = "\n".join([question, *results])
    known_numbers = _number_forms(source)
    for number in _number_forms(answer):
        if number not in known_numbers:
            return f"the number {number} is neither in the question nor in a tool result"
    lowered = source.lower()
    for name in _names(answer):
        if name.lower() not in lowered:
            return f"the name {name!r} is neither in the question nor in a tool result"
    said_numbers, said = _number_forms(answer), answer.lower()
    for result in results:
        numbers, words = _result_facts(result)
        # The result quoted as words, not JSON: the note is read by people (braces read as a program's output).
        quoted = f"the tool result “{_clip_words(_readable(result))}”"
        if numbers and not numbers & said_numbers:
            written = _NUMBER.findall(result)
            return f"it leaves out the {written[0]} of {quoted}" if len(written) == 1 else \
                f"it gives none of the numbers of {quoted}"
        if words and not any(w.lower() in said for w in words):
            return f"it leaves out {quoted}"
    return None


def _clip_words(text: str, limit: int = 120) -> str:
    """``text`` cut at a word boundary near ``limit`` characters, with … when cut."""
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0].rstrip(";,") + " …"


def _value_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _readable(result: str) -> str:
    """A JSON object or list result as words ("temp 18, sky sunny"; "a, b"); anything else as it is.

    Tools often return dicts (serialised as JSON): braces and quotes in a sentence read as a program's output.
    Nested values stay JSON, one level down.
    """
    value = json_container(result)

    def word(item: Any) -> str:
        if isinstance(item, (dict, list)):
            return json.dumps(item, ensure_ascii=False)
        if item is None:
            return "none"
        if isinstance(item, bool):
            return "yes" if item else "no"
        return _value_text(item)

    if isinstance(value, dict):
        return "; ".join(f"{key.replace('_', ' ')} {word(item)}" for key, item in value.items()) or "(empty)"
    if isinstance(value, list):
        return ", ".join(word(item) for item in value) or "(empty)"
    return result  # not JSON, or a JSON scalar: as it is


def results_answer(calls: list[tuple[str, dict[str, Any], str]]) -> str:
    """An answer written from the tool results alone: a result that is a sentence as it is, a short
    result as "Capital of (Kenya): Nairobi." (the tool and its arguments say what the value is), a JSON
    object as its keys and values in words."""
    lines = []
    for name, arguments, result in calls:
        result = _readable(" ".join(str(result).split()))
        if len(result.split()) >= 4 and result[-1:] in ".!?":
            lines.append(result)
            continue
        label = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name).replace("_", " ").replace("-", " ").strip()
        label = label[:1].upper() + label[1:]
        if result.lower().startswith(label.lower() + ":"):  # "Last error: Traceback …" says what it is itself
            lines.append(end_sentence(result))
            continue
        values = ", ".join(_value_text(v) for v in arguments.values() if v not in (None, ""))
        lines.append(end_sentence(f"{label} ({values}): {result or '(no result)'}" if values else f"{label}: {result}"))
    return " ".join(lines)


# --------------------------------------------------------------------------- direction of arguments
#: Pairs of argument names that say a direction, as (from-word, to-word) found in the names.
_DIRECTIONS = (("from", "to"), ("source", "target"), ("src", "dst"), ("input", "output"), ("origin", "destination"))


def _direction_pairs(names: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for a_word, b_word in _DIRECTIONS:
        froms = [n for n in names if a_word in re.split(r"[_\W]+", n.lower())]
        tos = [n for n in names if b_word in re.split(r"[_\W]+", n.lower())]
        if len(froms) == 1 and len(tos) == 1 and froms != tos:
            pairs.append((froms[0], tos[0]))
    return pairs


def _source_score(question: str, value: str) -> int:
    """+1 where ``value`` reads as the source in ``question`` ("26.2 miles", "from miles"), -1 where it
    reads as the target ("to kilometers", "in kilometers", "How many kilometers"), else 0."""
    v = re.escape(value)
    if re.search(rf"(?:\d[\d.,]*\s*|\bfrom\s+)(?:the\s+)?{v}\b", question, re.IGNORECASE):
        return 1
    if re.search(rf"\b(?:to|into|in|as|how\s+many|how\s+much)\s+(?:the\s+)?{v}\b", question, re.IGNORECASE):
        return -1
    return 0


def order_arguments(arguments: dict[str, Any], parameters: dict[str, Any], question: str) -> dict[str, Any]:
    """``arguments`` with each from/to pair (``from_unit``/``to_unit``, ``source``/``target``, ...) in the
    question's direction: "How many kilometers is 26.2 miles?" converts from miles to kilometers (the
    unit written after the amount, or after "from", is the source; after "to"/"in"/"how many", the
    target). Swapped only when the question says so; the caller's dict is unchanged."""
    names = list((parameters.get("properties") or {}).keys())
    ordered = dict(arguments)
    for source, target in _direction_pairs(names):
        a, b = ordered.get(source), ordered.get(target)
        if not (isinstance(a, str) and isinstance(b, str) and a and b):
            continue
        if a.lower() == b.lower():  # "from meters to meters": take the other end from the question
            wanted_source, wanted_target = _ends(question)
            if wanted_source and wanted_target and wanted_source.lower() != wanted_target.lower():
                if a.lower() == wanted_source.lower():
                    ordered[target] = wanted_target
                elif a.lower() == wanted_target.lower():
                    ordered[source] = wanted_source
            continue
        if _source_score(question, b) - _source_score(question, a) > 0:
            ordered[source], ordered[target] = b, a
    return ordered


def _ends(question: str) -> tuple[str | None, str | None]:
    """The source and the target a question names ("how many feet is 100 meters" → meters, feet)."""
    source = re.search(r"(?:\d[\d.,]*\s*|\bfrom\s+)(?:the\s+)?([^\W\d_][\w-]*)", question, re.IGNORECASE)
    target = re.search(r"\b(?:to|into|in|as|how\s+many|how\s+much)\s+(?:the\s+)?([^\W\d_][\w-]*)", question,
                       re.IGNORECASE)  # fmt: skip
    return (source.group(1) if source else None), (target.group(1) if target else None)


__all__ = ["grounding_problem", "order_arguments", "results_answer"]
