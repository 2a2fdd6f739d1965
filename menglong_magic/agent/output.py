"""Typed results: an ``output_type`` becomes a JSON schema for the model and a validator for its answer.

``T`` may be a pydantic model, a dataclass, a TypedDict or a simple type (``int``, ``list[str]``,
``Literal[...]``). Types whose schema is not an object are wrapped as ``{"result": ...}`` (the OpenAI
``json_schema`` response format wants an object) and unwrapped after validation.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pydantic

from ..tools.names import api_name

#: The tool offered instead of ``response_format`` to servers that reject it.
FINAL_RESULT_TOOL = "final_result"


@dataclass
class OutputSpec:
    """How one ``output_type`` is asked for and checked."""

    output_type: Any
    adapter: pydantic.TypeAdapter[Any]
    schema: dict[str, Any]  # always an object schema
    wrapped: bool  # True: the value is schema["properties"]["result"]
    name: str

    @classmethod
    def of(cls, output_type: Any) -> OutputSpec:
        """The spec of ``output_type``; built once per type (a TypeAdapter costs milliseconds, runs are many)."""
        try:
            return _cached_spec(output_type)
        except TypeError as exc:
            if "unhashable" not in str(exc):
                raise
            return cls._build(output_type)

    @classmethod
    def _build(cls, output_type: Any) -> OutputSpec:
        try:
            adapter = pydantic.TypeAdapter(output_type)
            schema = adapter.json_schema()
        except (pydantic.PydanticUserError, pydantic.PydanticSchemaGenerationError) as exc:
            raise TypeError(f"output_type {output_type!r} cannot be used: {exc}") from None
        name = getattr(output_type, "__name__", None) or "result"
        wrapped = schema.get("type") != "object"
        if wrapped:
            defs = schema.pop("$defs", None)
            schema = {"type": "object", "properties": {"result": schema}, "required": ["result"]}
            if defs:
                schema["$defs"] = defs
        return cls(output_type, adapter, schema, wrapped, name)

    # ------------------------------------------------------------------ what the model is sent
    def response_format(self) -> dict[str, Any]:
        """The OpenAI ``response_format`` entry (strict only where the schema allows it)."""
        return {
            "type": "json_schema",
            "json_schema": {"name": _identifier(self.name), "schema": self.schema, "strict": _strict_ok(self.schema)},
        }

    def tool_schema(self) -> dict[str, Any]:
        """The final-answer tool, for servers without ``response_format``."""
        return {
            "type": "function",
            "function": {
                "name": FINAL_RESULT_TOOL,
                "description": "Give the final answer. Call this once you have everything, with the answer as "
                               "its arguments.",
                "parameters": self.schema,
            },
        }

    # ------------------------------------------------------------------ what comes back
    def parse_text(self, text: str) -> Any:
        """The answer text as a ``T``; ``ValueError`` with a short reason the model can act on.

        Models write the JSON inside other text: after a ``<think>…</think>`` reasoning block, in a
        ```` ```json ```` fence, or with prose before or after it. Each JSON value found (the whole text, then
        fenced blocks, then every object or array in the text, in order) is tried; the first that validates
        is the answer. Otherwise the error is about the first JSON found (or says none was found).
        """
        first_problem: str | None = None
        for data in _json_candidates(text):
            try:
                return self.parse_data(data)
            except ValueError as exc:
                first_problem = first_problem or str(exc)
        if first_problem is not None:
            raise ValueError(first_problem)
        raise ValueError("the answer contains no JSON object")

    def parse_data(self, data: Any) -> Any:
        if self.wrapped:
            if not isinstance(data, dict) or "result" not in data:
                raise ValueError('the answer must be a JSON object {"result": ...}')
            data = data["result"]
        try:
            return self.adapter.validate_python(data)
        except pydantic.ValidationError as exc:
            details = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"the answer does not match the schema: {details}") from None

    def retry_prompt(self, problem: str, *, tool: bool) -> str:
        how = (f"Call the {FINAL_RESULT_TOOL} tool with arguments matching its schema." if tool
               else "Answer again with only the JSON object, nothing else.")
        return f"{problem}. {how}"


@functools.lru_cache(maxsize=128)
def _cached_spec(output_type: Any) -> OutputSpec:
    return OutputSpec._build(output_type)  # noqa: SLF001 (the class's own constructor, cached here)


def _identifier(name: str) -> str:
    return api_name(name, fallback="result")  # a class may be named anything Python allows: "Météo", "Ölpreis"


def _strict_ok(schema: Any) -> bool:
    """OpenAI's strict mode: every object closed (additionalProperties false) with all properties required."""
    if isinstance(schema, dict):
        if schema.get("type") == "object" or "properties" in schema:
            props = schema.get("properties", {})
            if schema.get("additionalProperties") is not False or set(schema.get("required", ())) != set(props):
                return False
        return all(_strict_ok(v) for k, v in schema.items() if k not in ("required", "enum", "const", "default"))
    if isinstance(schema, list):
        return all(_strict_ok(v) for v in schema)
    return True


_THINK = re.compile(r"<(think|thinking|reasoning)>.*?</\1>", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```[\w+-]*[ \t]*\n?(.*?)```", re.DOTALL)
_NOTHING = object()


def _without_reasoning(text: str) -> str:
    """``text`` without reasoning blocks (also an opening tag that was never closed, or a lone closing tag)."""
    text = _THINK.sub("", text)
    closing = re.search(r"</(think|thinking|reasoning)>", text, re.IGNORECASE)
    if closing is not None:  # the opening tag was in the prompt template: everything before is reasoning
        text = text[closing.end():]
    opening = re.search(r"<(think|thinking|reasoning)>", text, re.IGNORECASE)
    if opening is not None:  # cut off while still reasoning: what came before is all there is
        text = text[: opening.start()]
    return text.strip()


def _json_candidates(text: str) -> Iterator[Any]:
    """JSON values in ``text``, most likely answer first; each distinct text once."""
    seen: set[str] = set()

    def load(piece: str) -> Any:
        piece = piece.strip()
        if not piece or piece in seen:
            return _NOTHING
        seen.add(piece)
        try:
            return json.loads(piece)
        except json.JSONDecodeError:
            return _NOTHING

    body = _without_reasoning(text)
    for piece in (body, *(m.group(1) for m in _FENCE.finditer(body))):
        value = load(piece)
        if value is not _NOTHING:
            yield value
    decoder = json.JSONDecoder()
    position = 0
    while True:
        starts = [i for i in (body.find("{", position), body.find("[", position)) if i >= 0]
        if not starts:
            return
        start = min(starts)
        try:
            value, end = decoder.raw_decode(body, start)
        except json.JSONDecodeError:
            position = start + 1
            continue
        if body[start:end] not in seen:
            seen.add(body[start:end])
            yield value
        position = end
