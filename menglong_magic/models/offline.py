"""The offline demo model: deterministic, no network, exercises every offered tool once."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from ..usage import Usage
from ..events import TextDelta
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
            words = _candidate_strings(user_text)
            tool_calls = [
                ToolCall(
                    id=f"offline_{i + 1}",
                    name=spec["function"]["name"],
                    arguments=json.dumps(example_arguments(spec["function"].get("parameters") or {}, words)),
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
        quoted = user_text if len(user_text) <= 80 else user_text[:77] + "..."
        return f'Offline demo model here. You said: "{quoted}". Configure a real model to get real answers.'
    names = {}
    for message in turn:
        for tc in message.get("tool_calls") or ():
            names[tc["id"]] = tc["function"]["name"]
    parts = []
    for message in tool_results:
        result = _content(message)
        if len(result) > 60:
            result = result[:57] + "..."
        parts.append(f"{names.get(message.get('tool_call_id'), 'tool')} returned {result}")
    return "Offline demo model: I called every tool once. " + "; ".join(parts) + "."


def _candidate_strings(text: str) -> list[str]:
    """Quoted phrases, then capitalised words (not sentence-initial) of the user's message."""
    quoted = [a or b for a, b in re.findall(r"'([^']+)'|\"([^\"]+)\"", text)]
    unquoted = re.sub(r"'[^']*'|\"[^\"]*\"", " ", text)
    names = [m.group(1) for m in re.finditer(r"(?<![.!?]\s)(?<!^)\b([A-Z][a-z]+)\b", unquoted)]
    return quoted + [n for n in names if n not in quoted]


def example_arguments(schema: dict[str, Any], strings: list[str] | None = None) -> dict[str, Any]:
    """Deterministic arguments that satisfy a tool's JSON schema (defaults, enums, then by type).

    String parameters take (and consume) the next of ``strings`` (phrases from the user's message).
    """
    defs = schema.get("$defs", {})
    value = _example(schema, defs, "", strings if strings is not None else [])
    return value if isinstance(value, dict) else {}


def _example(schema: dict[str, Any], defs: dict[str, Any], name: str, strings: list[str] | None = None) -> Any:
    strings = strings if strings is not None else []
    if "$ref" in schema:
        return _example(defs.get(schema["$ref"].rsplit("/", 1)[-1], {}), defs, name, strings)
    if "default" in schema:
        return schema["default"]
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = [o for o in schema.get(key, ()) if o.get("type") != "null"]
        if options:
            return _example(options[0], defs, name, strings)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        required = schema.get("required", list(props))
        return {k: _example(v, defs, k, strings) for k, v in props.items() if k in required}
    if kind == "array":
        return [_example(schema.get("items", {}), defs, name, strings)]
    if kind == "integer":
        return max(int(schema.get("minimum", 2)), 2) if "maximum" not in schema else int(schema["maximum"])
    if kind == "number":
        return float(schema.get("minimum", 1.5))
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return strings.pop(0) if strings else (name or "example")
