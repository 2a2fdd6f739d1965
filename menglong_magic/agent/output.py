"""Typed results: an ``output_type`` becomes a JSON schema for the model and a validator for its answer.

``T`` may be a pydantic model, a dataclass, a TypedDict or a simple type (``int``, ``list[str]``,
``Literal[...]``). Types whose schema is not an object are wrapped as ``{"result": ...}`` (the OpenAI
``json_schema`` response format wants an object) and unwrapped after validation.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import pydantic

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
        """The answer text as a ``T``; ``ValueError`` with a short reason the model can act on."""
        raw = _strip_fence(text)
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"the answer is not valid JSON ({exc.msg} at position {exc.pos})") from None
        return self.parse_data(data)

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
    return OutputSpec._build(output_type)


def _identifier(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "_-" else "_" for c in name)
    return cleaned[:64] or "result"


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


def _strip_fence(text: str) -> str:
    """Small models wrap JSON in a Markdown code fence; take what is inside."""
    stripped = text.strip()
    if stripped.startswith("```"):
        body = stripped.split("\n", 1)[1] if "\n" in stripped else ""
        if body.rstrip().endswith("```"):
            body = body.rstrip()[:-3]
        return body.strip()
    return stripped
