"""Prompts and grammars for the embedded model: ChatML text written here, GBNF from JSON schemas.

llama-cpp-python's Jinja chat formats HTML-escape text, so prompts are built here (:func:`chatml_prompt`)
and sent to the text completions endpoint. Arguments are written under a GBNF grammar built from a tool's
JSON schema (:func:`arguments_grammar`); a choice among names under :func:`choice_grammar`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .server import LOCAL_SYSTEM_PROMPT


def adapt_messages(messages: list[dict[str, Any]], *, add_system: bool) -> list[dict[str, Any]]:
    """The history as plain chat messages a small model can read (no ``tool`` role, no null content).

    Assistant ``content: null`` becomes ``""``; tool results become user messages naming the tool; a
    minimal system prompt is added when ``add_system`` and there is none. The caller's list is unchanged.
    """
    names: dict[str, str] = {}
    adapted: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role == "assistant":
            message = dict(message)
            if message.get("content") is None:
                message["content"] = ""
            for call in message.get("tool_calls") or ():
                names[call.get("id", "")] = call.get("function", {}).get("name", "tool")
        elif role == "tool":
            name = names.get(message.get("tool_call_id", ""), "tool")
            message = {"role": "user", "content": f"The {name} tool returned: {message.get('content') or ''}"}
        adapted.append(message)
    if add_system and not any(m.get("role") == "system" for m in adapted):
        adapted.insert(0, {"role": "system", "content": LOCAL_SYSTEM_PROMPT})
    return adapted


# --------------------------------------------------------------------------- prompts (ChatML, built here)
#: ChatML markers end a turn; a message must not be able to forge one (the server parses special tokens).
STOP = ["<|im_end|>", "<|im_start|>", "<|endoftext|>"]
#: Old turns beyond this many characters are left out of the prompt (the context is 4096 tokens).
_MAX_PROMPT_CHARS = 9000


def _clean(text: Any) -> str:
    return str(text or "").replace("<|", "< |")


def chatml_prompt(messages: list[dict[str, Any]], *, system: str | None = None, prefill: str = "") -> str:
    """ChatML text for ``messages`` (SmolLM2's template), written here rather than by llama.cpp's Jinja.

    llama-cpp-python's Jinja chat formats autoescape HTML, so a ``'`` reached the model as ``&#39;`` and
    came back in answers; this prompt keeps text exactly as typed. Tool results are shown as user
    messages, assistant tool-call turns as one line naming the calls; the oldest turns are dropped first
    when the prompt would not fit the context.
    """
    adapted = adapt_messages(messages, add_system=False)
    if system is not None or not any(m.get("role") == "system" for m in adapted):
        adapted = [m for m in adapted if m.get("role") != "system"]
        adapted.insert(0, {"role": "system", "content": system or LOCAL_SYSTEM_PROMPT})
    turns: list[str] = []
    for message in adapted:
        content = message.get("content") or ""
        if message.get("role") == "assistant" and not content and message.get("tool_calls"):
            content = "Calling " + ", ".join(_call_text(c) for c in message["tool_calls"]) + "."
        if not isinstance(content, str):  # content parts: keep the text ones
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        turns.append(f"<|im_start|>{message.get('role', 'user')}\n{_clean(content)}<|im_end|>\n")
    head, body = turns[:1], turns[1:]
    while len(body) > 1 and sum(map(len, head + body)) > _MAX_PROMPT_CHARS:
        body.pop(0)
    return "".join(head + body) + "<|im_start|>assistant\n" + prefill


def _call_text(call: dict[str, Any]) -> str:
    function = call.get("function", {})
    return f"{function.get('name', 'tool')}({function.get('arguments', '')})"


# --------------------------------------------------------------------------- GBNF from JSON schema
_PRIMITIVES = {
    "char": r'[^"\\\x7F\x00-\x1F] | "\\" ["\\/bfnrt]',
    "string": r'"\"" char{0,120} "\""',
    "integer": r'"-"? [0-9]{1,15}',
    "number": r'"-"? [0-9]{1,15} ("." [0-9]{1,10})?',
    "boolean": r'"true" | "false"',
    "null": r'"null"',
    "value": r"string | number | boolean | null | array | object",
    "array": r'"[" (value (", " value)*)? "]"',
    "object": r'"{" (string ": " value (", " string ": " value)*)? "}"',
}


def _literal(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class _Grammar:
    """A GBNF grammar (llama.cpp) for JSON that validates against a tool's parameter schema.

    Objects list their required properties in schema order (optional ones keep their defaults);
    ``$ref``, ``enum``, ``const``, ``anyOf``/``oneOf``, arrays and scalar types are followed; anything
    else becomes any JSON value. Strings are at most 120 characters, one line.
    """

    def __init__(self, strings: list[str] | None = None, avoid: frozenset[str] = frozenset()) -> None:
        self.rules: dict[str, str] = {}
        self.used: set[str] = set()
        #: When given, string values are limited to these (spans of the question); numbers too, if any.
        self.strings = strings
        #: Words (lower case) a copied string neither starts nor ends with: question words, the tool's own
        #: name ("capital of Kenya" for capital_of), numbers when a numeric argument takes them.
        self.avoid = avoid

    def _primitive(self, name: str) -> str:
        self.used.update(_PRIMITIVES if name in ("value", "array", "object") else (name, "char"))
        return name

    def _copied_string(self) -> str:
        """A run of consecutive words of the question: one rule per word, linear in its length."""
        words = self.strings or []
        if "copied-string" not in self.rules:
            for i, word in enumerate(words):
                piece = _literal(json.dumps(word, ensure_ascii=False)[1:-1])
                more = f'" " cw-{i + 1}' if i + 1 < len(words) else ""
                if not more:
                    self.rules[f"cw-{i}"] = piece
                elif word[-1].isalnum() and word.lower() not in self.avoid:
                    self.rules[f"cw-{i}"] = f"{piece} ({more})?"
                else:  # a value does not end on an operator, a stray symbol or a question word
                    self.rules[f"cw-{i}"] = f"{piece} {more}"
            starts = [f"cw-{i}" for i, w in enumerate(words) if w[0].isalnum() and w.lower() not in self.avoid]
            starts = starts or [f"cw-{i}" for i, w in enumerate(words) if w[0].isalnum()]
            starts = starts or [f"cw-{i}" for i in range(len(words))]
            self.rules["copied-string"] = '"\\"" (' + " | ".join(starts) + ') "\\""'
        return "copied-string"

    def add(self, hint: str, body: str) -> str:
        base = re.sub(r"[^A-Za-z0-9]+", "-", hint).strip("-").lower() or "r"
        name, n = base, 1
        while name in self.rules or name in _PRIMITIVES or name == "root":
            n += 1
            name = f"{base}-{n}"
        self.rules[name] = body
        return name

    def schema(self, s: Any, hint: str, defs: dict[str, Any], depth: int = 0) -> str:
        if not isinstance(s, dict) or depth > 8:
            return self._primitive("value")
        if "$ref" in s:
            return self.schema(defs.get(str(s["$ref"]).rsplit("/", 1)[-1], {}), hint, defs, depth + 1)
        if "const" in s:
            return _literal(json.dumps(s["const"]))
        if "enum" in s:
            return "(" + " | ".join(_literal(json.dumps(v)) for v in s["enum"]) + ")"
        for key in ("anyOf", "oneOf"):
            if s.get(key):  # null last: the model should try a value first
                options = sorted(s[key], key=lambda o: isinstance(o, dict) and o.get("type") == "null")
                return "(" + " | ".join(self.schema(o, hint, defs, depth + 1) for o in options) + ")"
        if isinstance(s.get("allOf"), list) and len(s["allOf"]) == 1:
            return self.schema(s["allOf"][0], hint, defs, depth + 1)
        kind = s.get("type")
        if isinstance(kind, list):
            return "(" + " | ".join(self.schema({**s, "type": k}, hint, defs, depth + 1) for k in kind) + ")"
        if kind == "string" and self.strings:
            return self._copied_string()
        if kind in ("integer", "number") and self.strings:
            pattern = r"-?[0-9]+(\.[0-9]+)?" if kind == "number" else r"-?[0-9]+"
            numbers = [t for t in self.strings if re.fullmatch(pattern, t)]
            if numbers:
                return "(" + " | ".join(_literal(n) for n in dict.fromkeys(numbers)) + ")"
        if kind in ("string", "integer", "number", "boolean", "null"):
            return self._primitive(kind)
        if kind == "array":
            item = self.schema(s.get("items", {}), hint + "-item", defs, depth + 1)
            if s.get("minItems", 0) >= 1:
                return f'"[" {item} (", " {item})* "]"'
            return f'"[" ({item} (", " {item})*)? "]"'
        if kind == "object" or "properties" in s:
            props = s.get("properties") or {}
            if not props:
                return '"{}"' if s.get("additionalProperties") is False else self._primitive("object")
            names = [p for p in s.get("required", []) if p in props] or list(props)
            parts = [
                _literal(("" if i == 0 else ", ") + json.dumps(p) + ": ") + " "
                + self.schema(props[p], f"{hint}-{p}", defs, depth + 1)
                for i, p in enumerate(names)
            ]
            return self.add(hint, '"{" ' + " ".join(parts) + ' "}"')
        return self._primitive("value")

    def text(self, root: str) -> str:
        lines = [f"root ::= {root}", *(f"{k} ::= {v}" for k, v in self.rules.items())]
        lines += [f"{k} ::= {v}" for k, v in _PRIMITIVES.items() if k in self.used]
        return "\n".join(lines) + "\n"


#: Words a copied value does not start or end with ("What is the capital of Kenya" is no country).
_NOT_A_VALUE = frozenset(
    """what whats what's which who whom whose how when where why is are was were be do does did can could would
    should will please tell me give show find look up get many much the a an of in on at to from into for by and
    or is it its this that there here convert calculate compute count""".split()
)


def arguments_grammar(
    parameters: dict[str, Any] | None, copy_from: str | None = None, tool_name: str = ""
) -> str:
    """GBNF for a JSON object that validates against a tool's ``parameters`` schema.

    ``copy_from``: string (and number) values must be runs of words of this text (see :func:`text_words`),
    not starting or ending with a question word or a word of ``tool_name``, and not starting with a number
    when a numeric argument is there to take it.
    """
    params = parameters or {"type": "object", "properties": {}}
    avoid = set(_NOT_A_VALUE) | {w.lower() for w in re.split(r"[^A-Za-z0-9]+|(?<=[a-z])(?=[A-Z])", tool_name) if w}
    props = params.get("properties") or {}
    if any(isinstance(p, dict) and p.get("type") in ("number", "integer") for p in props.values()):
        avoid |= {w.lower() for w in text_words(copy_from or "") if re.fullmatch(r"-?[0-9][0-9.,]*", w)}
    grammar = _Grammar(text_words(copy_from) if copy_from else None, frozenset(avoid))
    root = grammar.schema(params, "args", params.get("$defs") or params.get("definitions") or {})
    if root in ("object", "value"):
        root = '"{}"' if not params.get("properties") else root
    return grammar.text(root)


_TOKEN = re.compile(r"'([^'\n]+)'|\"([^\"\n]+)\"|“([^”\n]+)”|‘([^’\n]+)’|([^\s,;:!?()\"“”‘’]+)")


def text_words(text: str) -> list[str]:
    """The words of ``text`` a value may be copied from (a quoted passage counts as one word, without its
    quotes; trailing punctuation is dropped). A 135M model copies a value much more reliably when it can
    only write a run of consecutive words of the question.
    """
    words: list[str] = []
    for match in _TOKEN.finditer(text):
        quoted = next((g for g in match.groups()[:4] if g), None)
        word = quoted if quoted is not None else match.group(5).rstrip(".'")
        if word:
            words.append(word)
    return words


def choice_grammar(options: list[str]) -> str:
    """GBNF for exactly one of ``options``."""
    return "root ::= " + " | ".join(_literal(o) for o in options) + "\n"
