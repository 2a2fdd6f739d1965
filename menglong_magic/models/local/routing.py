"""Routing a question to tools by shared words: a 135M model cannot pick tools from descriptions."""

from __future__ import annotations

import re
from typing import Any

# --------------------------------------------------------------------------- routing a question to tools
_WORD = re.compile(r"[A-Za-z][a-z]*|[0-9]+|[+*/×÷^%-](?=\s*[0-9(])")
_STOPWORDS = frozenset(
    """a an the is are was were be been being am do does did doing what whats which whom how when where why
    there here it its this that these those of in on at to for from by with as and or but if then than so
    me my mine you your yours i we our us he she they them his her their please tell give show get gets
    current currently can could would should will shall may might must let lets just now right also some
    any all into out up down over under again very thing things something someone one two use using tool
    tools return returns returned value values given such e g eg like say said know want need about name""" .split()
)


def _stem(word: str) -> str:
    word = word.lower()
    for suffix, repl in (("ies", "y"), ("ing", ""), ("ed", ""), ("es", ""), ("s", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)] + repl
            break
    return word


def _words(text: str) -> set[str]:
    return {_stem(w) for w in _WORD.findall(text) if w.lower() not in _STOPWORDS}


def _tool_words(function: dict[str, Any]) -> set[str]:
    name = re.sub(r"([a-z])([A-Z])", r"\1 \2", str(function.get("name", ""))).replace("_", " ").replace("-", " ")
    text = [name, str(function.get("description") or "")]
    for key in (function.get("parameters") or {}).get("properties") or {}:
        text.append(str(key).replace("_", " "))
    joined = " ".join(text)
    return {w for w in _words(joined) if not w.isdigit()} | _operator_words(joined)


_SPLIT = re.compile(
    r"\s*(?:[?!;]+|\.(?=\s|$)|,?\s+and\s+(?:then\s+)?|,\s*(?:also\s+|then\s+)?"
    r"(?=(?:what|how|who|whom|when|where|which|is|are|tell|look|find|calculate|compute|count|give|show|get)\b))\s*",
    re.IGNORECASE,
)


def question_parts(question: str) -> list[str]:
    """``question`` split into its requests ("X, and Y?" → X, Y); quoted text is never split."""
    quoted: list[str] = []

    def hide(match: re.Match[str]) -> str:
        quoted.append(match.group(0))
        return f"\x00{len(quoted) - 1}\x00"

    # A quote opens and closes only where it does not touch a letter: "What's … and what's …" is no quotation.
    hidden = re.sub(r"(?<!\w)'[^'\n]*'(?!\w)|\"[^\"\n]*\"|“[^”\n]*”|(?<!\w)‘[^’\n]*’(?!\w)", hide, question)
    parts = [re.sub("\x00(\\d+)\x00", lambda m: quoted[int(m.group(1))], p).strip(" ,.") for p in _SPLIT.split(hidden)]
    return [p for p in parts if p] or [question.strip()]


def route(question: str, tools: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """For each part of ``question`` that shares words with some tool: (part, best-matching tool names).

    Matching counts shared content words (stemmed, stop words removed) between the part and the tool's
    name, description and parameter names/descriptions; a tie leaves several names for the model to pick.
    """
    vocab = {f["name"]: _tool_words(f) for f in tools}
    routed: list[tuple[str, list[str]]] = []
    for part in question_parts(question):
        words = _words(part)
        scores = {name: len(words & tool_words) for name, tool_words in vocab.items()}
        best = max(scores.values(), default=0)
        if best > 0:
            routed.append((part, [n for n, s in scores.items() if s == best]))
    return routed


def _operator_words(text: str) -> set[str]:
    return {c for c in "+*/×÷^%" if c in text}
