"""What a server sends, checked before it reaches the loop, a cassette, an event or a view.

Every model backend builds its answer from these: text is valid Unicode (:func:`clean_text`, and
:class:`TextJoiner` for streamed fragments, which joins a UTF-16 surrogate pair split across chunks),
tool-call arguments are a JSON object text or a stated problem (:func:`check_arguments`), and streamed
tool-call fragments are reassembled by :class:`ToolCallAssembler` under every pattern servers use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

_REPLACEMENT = "\ufffd"


def clean_text(text: str) -> str:
    """``text`` as valid Unicode: adjacent UTF-16 surrogate halves joined, lone halves → U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # surrogatepass writes each half as UTF-16; decoding joins pairs and replaces what is left alone.
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


def _is_high(ch: str) -> bool:
    return "\ud800" <= ch <= "\udbff"


class TextJoiner:
    """Streamed text fragments → valid Unicode, holding back a high surrogate until its low half comes."""

    def __init__(self) -> None:
        self._held = ""

    def feed(self, fragment: str) -> str:
        """The clean text that can be shown now (may be empty)."""
        text = self._held + fragment
        self._held = ""
        if text and _is_high(text[-1]):
            text, self._held = text[:-1], text[-1]
        return clean_text(text)

    def flush(self) -> str:
        """What is still held at the end of the stream (a lone half: U+FFFD)."""
        held, self._held = self._held, ""
        return _REPLACEMENT if held else ""


def check_arguments(raw: str | None) -> tuple[str, str | None]:
    """Tool-call arguments as ``(JSON object text, problem)``.

    ``None``, ``""``, whitespace and ``null`` (sent for tools without parameters) become ``"{}"``. Text that
    is not a JSON object (cut off, invalid, an array) becomes ``"{}"`` with a problem saying what is wrong,
    without quoting it: the call is answered with that error, and the history never carries the text as if
    the model had written valid arguments.
    """
    if raw is None:
        return "{}", None
    text = clean_text(raw)
    if not text.strip():
        return "{}", None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        cut = "; the text looks cut off" if exc.pos >= len(text.rstrip()) else ""
        return "{}", f"the arguments are not valid JSON ({exc.msg} at character {exc.pos} of {len(text)}{cut})"
    if value is None:
        return "{}", None
    if not isinstance(value, dict):
        return "{}", f"the arguments must be a JSON object, got a JSON {type(value).__name__}"
    return text, None


@dataclass
class _Assembling:
    id: str = ""
    name: str = ""
    arguments: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    args: TextJoiner = field(default_factory=TextJoiner)


class ToolCallAssembler:
    """Streamed tool-call fragments → whole calls, whatever pattern the server streams them in.

    - OpenAI: the first fragment of a call has ``index``, ``id`` and the name; later ones only ``index``
      and pieces of the arguments.
    - Ollama: every call whole in one fragment, all parallel calls at ``index`` 0 with distinct ids: a new
      id at an index already in use starts a new call.
    - No ``index`` at all (some proxies): a fragment with a new id starts a new call, otherwise it continues
      the last one.
    - llama.cpp repeats the whole name in every fragment; some servers send the name or the id in pieces,
      or late (after arguments): a repeat is ignored, a growing prefix replaces, other pieces are appended.
    """

    def __init__(self) -> None:
        self._calls: list[_Assembling] = []
        self._by_index: dict[int, int] = {}

    def feed(self, index: int | None, id: str | None, name: str | None, arguments: str | None,
             extra: dict[str, Any] | None = None) -> tuple[int, str, str]:
        """Add one fragment; returns ``(slot, name so far, clean arguments delta)`` (slot: the call's position).

        ``extra``: provider fields of the fragment to keep with the call (Gemini's ``extra_content``).
        """
        id, name, arguments = id or "", name or "", arguments or ""
        slot = self._slot(index, id, name)
        call = self._calls[slot]
        if extra:
            call.extra.update(extra)
        if id and id != call.id:
            call.id = id if (not call.id or id.startswith(call.id)) else call.id + id
        if name:
            piece = clean_text(name)
            if piece != call.name:
                call.name = piece if (call.name and piece.startswith(call.name)) else call.name + piece
        delta = call.args.feed(arguments) if arguments else ""
        call.arguments += delta
        return slot, call.name, delta

    def _slot(self, index: int | None, id: str, name: str) -> int:
        current = self._by_index.get(index) if index is not None else (len(self._calls) - 1 if self._calls else None)
        if current is not None and self._starts_new(self._calls[current], id, name):
            current = None
        if current is None:
            self._calls.append(_Assembling())
            current = len(self._calls) - 1
        if index is not None:
            self._by_index[index] = current
        return current

    @staticmethod
    def _starts_new(call: _Assembling, id: str, name: str) -> bool:
        if not id or not call.id or id == call.id or id.startswith(call.id):
            return False
        # A different id: a new call, unless it is the next piece of an id (no name, arguments not yet whole).
        return bool(name) or _whole_object(call.arguments)

    def calls(self) -> list[tuple[str, str, str, dict[str, Any] | None]]:
        """``(id, name, arguments, extra)`` of every call with a name, in order (arguments as received, cleaned)."""
        out = []
        for call in self._calls:
            call.arguments += call.args.flush()
            if call.name:
                out.append((call.id, call.name, call.arguments, call.extra or None))
        return out


def _whole_object(text: str) -> bool:
    if not text.strip():
        return False
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False
