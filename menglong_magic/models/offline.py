"""The offline demo model: deterministic, no network, exercises every offered tool once."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from ..events import TextDelta
from ..markup import end_sentence, shorten
from ..usage import Usage
from .base import Emit, Model, ModelRequest, ModelResponse, ToolCall


class OfflineModel(Model):
    """Calls each offered tool once with arguments generated from its schema, then summarises.

    Without tools it answers with a short notice that it is the offline demo model. ``delay`` (seconds
    per streamed word) makes the live panel visible in demos; the default is instant.
    """

    name = "offline"

    def __init__(self, delay: float = 0.0):
        self.delay = delay

    async def request(self, request: ModelRequest, emit: Emit) -> ModelResponse:
        turn = _current_turn(request.messages)
        user_text = next((_content(m) for m in turn if m.get("role") == "user"), "")
        tool_results = [m for m in turn if m.get("role") == "tool"]
        if request.tools and not tool_results:
            words = _Phrases(_candidate_strings(user_text))  # shared: tools take the phrases in turn
            numbers = _Phrases(_candidate_numbers(user_text))  # and the numbers ("Add 2 and 3": a=2, b=3)
            tool_calls = [
                ToolCall(
                    id=f"offline_{i + 1}",
                    name=spec["function"]["name"],
                    arguments=json.dumps(example_arguments(spec["function"].get("parameters") or {}, words, numbers)),
                )
                for i, spec in enumerate(request.tools)
            ]
            text = None
        else:
            tool_calls = []
            text = _summary(user_text, turn, tool_results)
            for i, word in enumerate(text.split(" ")):
                if self.delay:
                    await asyncio.sleep(self.delay)
                emit(TextDelta(request.run_id, iteration=request.iteration, delta=(" " if i else "") + word))
        prompt_tokens = sum(len(_content(m).split()) for m in request.messages)
        completion_tokens = len(text.split()) if text else 8 * len(tool_calls)
        return ModelResponse(
            text=text,
            tool_calls=tool_calls,
            usage=Usage(prompt_tokens, completion_tokens),
            model=self.name,
            finish_reason="tool_calls" if tool_calls else "stop",
        )


def _current_turn(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages from the last user message on."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "user":
            return messages[i:]
    return []


def _content(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):  # multi-part content
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return content or ""


def _summary(user_text: str, turn: list[dict[str, Any]], tool_results: list[dict[str, Any]]) -> str:
    if not tool_results:
        quoted = shorten(user_text, 80)
        return f'Offline demo model here. You said: "{quoted}". Configure a real model to get real answers.'
    names = {}
    for message in turn:
        for tc in message.get("tool_calls") or ():
            names[tc["id"]] = tc["function"]["name"]
    parts = []
    for message in tool_results:
        result = shorten(_content(message), 120)  # room for a denial with its reason ("… by the user: not bob.")
        parts.append(f"{names.get(message.get('tool_call_id'), 'tool')} returned {result}")
    return "Offline demo model: I called every tool once. " + end_sentence("; ".join(parts))


# Quote pairs: ASCII single and double quotes, and typographic ones. A quote opens only at the start of a word
# (not after a letter or digit, so the apostrophe in "What's" or "don't" never opens a phrase) and is followed by a
# non-space; it closes only after a non-space and when no letter or digit follows (so "Bob's" does not close, while
# a closing quote before punctuation does: "in 'Paris'?").
_QUOTES = (("'", "'"), ('"', '"'), ("\u2018", "\u2019"), ("\u201c", "\u201d"))
_QUOTE_RES = [
    re.compile(rf"(?<![\w{re.escape(o + c)}]){re.escape(o)}(?=[^\s{re.escape(c)}])(.+?)(?<=\S){re.escape(c)}(?!\w)")
    for o, c in _QUOTES
]
# A name: a capitalised word of two letters or more, with inner apostrophe/hyphen parts that are capitalised too
# (O'Brien, Jean-Luc; "Paris's" gives "Paris"), and following capitalised words (New York). Not at the start of the
# text, of a line or of a sentence, where capitals are grammar, not names.
_NAME_WORD = r"[A-Z](?:[A-Za-z]+(?:['\u2019-][A-Z][A-Za-z]+)*|['\u2019][A-Z][A-Za-z]+)"
_NAME_RE = re.compile(
    rf"(?<![.!?]\s)(?<![.!?]\s\s)(?<!^)(?<![\w'\u2019-])({_NAME_WORD}(?:[ \t]+{_NAME_WORD})*)",
    re.MULTILINE,
)


def _candidate_strings(text: str) -> list[str]:
    """Phrases of the user's message for string arguments: quoted phrases, then names, in order, without repeats.

    Apostrophes inside or at the end of words (What's, don't, Paris') are not quotes. Names are capitalised words
    that do not start a sentence (see ``_NAME_RE``).
    """
    text = text.strip()
    spans: list[tuple[int, int, str]] = []
    for pattern in _QUOTE_RES:
        spans += [(m.start(), m.end(), m.group(1).strip()) for m in pattern.finditer(text)]
    spans.sort()
    quoted: list[str] = []
    kept: list[tuple[int, int]] = []
    for start, end, phrase in spans:
        if kept and start < kept[-1][1]:
            continue  # inside an earlier quote (a quote within a quote)
        kept.append((start, end))
        quoted.append(phrase)
    unquoted = text
    for start, end in reversed(kept):
        unquoted = unquoted[:start] + " " * (end - start) + unquoted[end:]
    names = [m.group(1) for m in _NAME_RE.finditer(unquoted)]
    out: list[str] = []
    for phrase in quoted + names:
        if phrase and phrase not in out:
            out.append(phrase)
    return out


_NUMBER_RE = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.]|\.\d)")


def _candidate_numbers(text: str) -> list[float]:
    """The numbers written in the user's message, in order ("Add 2 and 3.5" gives 2 and 3.5; not "v2" or "3rd")."""
    return [float(m.group(0)) for m in _NUMBER_RE.finditer(text)]


class _Phrases:
    """Hands out the message's phrases (or numbers) in turn; once all are used, starts again from the first."""

    def __init__(self, phrases: list[Any]):
        self.phrases = list(phrases)
        self.used = 0

    def take(self) -> Any:
        if not self.phrases:
            return None
        phrase = self.phrases[self.used % len(self.phrases)]
        self.used += 1
        return phrase


def example_arguments(schema: dict[str, Any], strings: list[str] | _Phrases | None = None,
                      numbers: list[float] | _Phrases | None = None) -> dict[str, Any]:
    """Deterministic arguments that satisfy a tool's JSON schema (defaults, enums, then by type).

    String parameters take the next of ``strings`` (phrases from the user's message) in turn; when every phrase
    has been used they start again from the first (two tools about 'Paris' both get "Paris"). Only when the
    message has no phrase at all does a string parameter get the schema's first ``examples`` entry, else its own
    name (a visible placeholder). Number and integer parameters take ``numbers`` (the message's) the same way,
    where the value fits (an integer for an integer, within the schema's bounds); else a value the schema allows.
    """
    defs = schema.get("$defs", {})
    phrases = strings if isinstance(strings, _Phrases) else _Phrases(strings or [])
    values = numbers if isinstance(numbers, _Phrases) else _Phrases(numbers or [])
    value = _example(schema, defs, "", phrases, values)
    return value if isinstance(value, dict) else {}


def _fits(number: Any, schema: dict[str, Any], integer: bool) -> bool:
    if number is None or (integer and not float(number).is_integer()):
        return False
    return schema.get("minimum", -float("inf")) <= number <= schema.get("maximum", float("inf"))


def _example(schema: dict[str, Any], defs: dict[str, Any], name: str, strings: _Phrases, numbers: _Phrases) -> Any:
    if "$ref" in schema:
        return _example(defs.get(schema["$ref"].rsplit("/", 1)[-1], {}), defs, name, strings, numbers)
    if "default" in schema:
        return schema["default"]
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = [o for o in schema.get(key, ()) if o.get("type") != "null"]
        if options:
            return _example(options[0], defs, name, strings, numbers)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        required = schema.get("required", list(props))
        return {k: _example(v, defs, k, strings, numbers) for k, v in props.items() if k in required}
    if kind == "array":
        return [_example(schema.get("items", {}), defs, name, strings, numbers)]
    if kind in ("integer", "number"):
        number = numbers.take()
        if _fits(number, schema, kind == "integer"):
            return int(number) if kind == "integer" else number
    if kind == "integer":
        return max(int(schema.get("minimum", 2)), 2) if "maximum" not in schema else int(schema["maximum"])
    if kind == "number":
        return float(schema.get("minimum", 1.5))
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    phrase = strings.take()
    if phrase is not None:
        return phrase
    examples = schema.get("examples")
    if isinstance(examples, list) and examples and isinstance(examples[0], str):
        return examples[0]
    return name or "example"
