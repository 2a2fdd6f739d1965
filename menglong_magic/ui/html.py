"""The run view as HTML, from the folded state (:class:`~.viewmodel.RunViewModel`): header, live body blocks,
tool cards, batch table, progress and the final view. Every piece of model or tool text goes through
:func:`html.escape` or :func:`~menglong_magic.markup.render_markdown`.
"""

from __future__ import annotations

import json
import time
from html import escape

from ..markup import (
    CELL_STYLE,
    NO_TYPESET,
    SHORT_CELL_STYLE,
    TABLE_STYLE,
    WIDE_CELL_STYLE,
    clip,
    json_container,
    output_html,
    render_markdown,
)
from .state import (
    EXPANDED_ITERATIONS,
    MAX_ANSWER,
    MAX_BATCH_ROWS,
    STATUS_COLORS,
    STATUS_LABELS,
    IterationView,
    RunViewModel,
    ToolCard,
)


def _svg(body: str, name: str) -> str:
    # aria-hidden: the words next to every icon already say the state.
    return (f'<svg class="mm-icon mm-icon-{name}" width="12" height="12" viewBox="0 0 12 12" fill="none" '
            'stroke="currentColor" stroke-width="1.6" stroke-linecap="round" stroke-linejoin="round" '
            f'aria-hidden="true" style="vertical-align:-1px">{body}</svg>')


#: Inline SVG icons (drawn in the text colour): no emoji, so no empty boxes where no emoji font is installed.
ICON_SVG = {
    "running": _svg('<circle cx="6" cy="6" r="4.8"/><path d="M6 3.2V6l1.9 1.3"/>', "running"),
    "awaiting": _svg('<circle cx="6" cy="6" r="4.8"/><path d="M4.7 4.2v3.6M7.3 4.2v3.6"/>', "awaiting"),
    "ok": _svg('<path d="M2 6.4l2.6 2.6L10 3.4"/>', "ok"),
    "error": _svg('<path d="M3 3l6 6M9 3L3 9"/>', "error"),
    "cancelled": _svg('<rect x="2.5" y="2.5" width="7" height="7" rx="1" fill="currentColor"/>', "cancelled"),
    "denied": _svg('<circle cx="6" cy="6" r="4.8"/><path d="M2.6 9.4l6.8-6.8"/>', "denied"),
    "waiting": _svg('<path d="M4.2 2.5v7M7.8 2.5v7"/>', "waiting"),
    "info": _svg('<circle cx="6" cy="6" r="4.8"/><path d="M6 5.4v3M6 3.6v.1"/>', "info"),
}


#: A view's header row: title, badge, figures side by side (the run view's and the map's final views).
HEADER_STYLE = "display:flex;gap:10px;align-items:center;flex-wrap:wrap"


def status_badge(status: str, label: str, color: str) -> str:
    """A coloured pill saying a run's (or map's) state."""
    return (f'<span class="mm-status mm-status-{escape(status.replace(" ", "-"))}" style="background:{color};'
            f'color:white;border-radius:8px;padding:1px 8px;font-size:85%">{escape(label)}</span>')


def badge_html(vm: RunViewModel) -> str:
    return status_badge(vm.status, STATUS_LABELS.get(vm.status, vm.status), STATUS_COLORS.get(vm.status, "#6e7781"))

def header_html(vm: RunViewModel) -> str:
    meta = " · ".join(escape(x) for x in (vm.model, vm.mode) if x)
    parts = [
        f"<b>{escape(vm.title)}</b>",
        badge_html(vm),
        f'<span class="mm-meta" style="color:#57606a">{meta}</span>',
        f'<span class="mm-elapsed">{vm.elapsed:.1f}s</span>',
    ]
    if vm.tokens is not None:  # unknown usage is said once, in the usage line, not as "tokens: –" here too
        parts.append(f'<span class="mm-tokens">tokens: {vm.tokens}</span>')
    if vm.cost_text():
        parts.append(f'<span class="mm-cost">{escape(vm.cost_text())}</span>')
    if vm.retries:
        parts.append(f'<span class="mm-retries">retries: {vm.retries}</span>')
    return f'<div class="mm-header" style="{HEADER_STYLE}">' + "".join(parts) + "</div>"

def body_blocks(vm: RunViewModel) -> list[tuple[str, str]]:
    """The live body as keyed blocks: a view replaces only the blocks whose HTML changed."""
    if vm.batch is not None:
        return [("batch", batch_html(vm))]
    blocks = [("task", f'<div class="mm-task" style="color:#57606a">{escape(clip(vm.task, 300))}</div>')]
    if vm.model_note:
        blocks.append(("model", model_note_html(vm)))
    if vm.status == "waiting":
        blocks.append(("waiting", f'<div class="mm-waiting" style="color:#8250df">{ICON_SVG["waiting"]} '
                                  f"{escape(vm.waiting_text())}</div>"))
    if vm.dropped_iterations:
        blocks.append(("dropped", f"<div>… {vm.dropped_iterations} earlier iteration(s) not shown</div>"))
    recent = {it.number for it in vm.iterations[-EXPANDED_ITERATIONS:]}
    for it in vm.iterations:
        blocks.append((f"it-{it.number}", iteration_html(vm, it, it.number in recent or not it.finished)))
    if vm.error:
        blocks.append(("error", error_html(vm)))
    return blocks

def body_html(vm: RunViewModel) -> str:
    return "".join(html for _key, html in body_blocks(vm))

def model_note_html(vm: RunViewModel) -> str:
    return f'<div class="mm-model-note" style="color:#57606a;font-style:italic">{escape(vm.model_note)}</div>'

def error_html(vm: RunViewModel) -> str:
    return f'<div class="mm-error" style="color:#cf222e">{escape(vm.error or "")}</div>'

def note_html(note: str) -> str:
    return f'<div class="mm-note" style="color:#6e7781;font-size:90%">{ICON_SVG["info"]} {escape(note)}</div>'


def iteration_html(vm: RunViewModel, it: IterationView, expanded: bool, skip_text: bool = False,
                   skip_note: bool = False) -> str:
    if it.duration is not None:
        state = f"{it.duration:.2f}s"
    elif vm.finished:
        state = ""
    elif it.model_since is not None:
        state = f"waiting for the model · {time.monotonic() - it.model_since:.0f}s"
    else:
        state = "running…"
    summary = " · ".join(x for x in (f"iteration {it.number}", f"{len(it.tools)} tool call(s)", state) if x)
    inner = []
    if it.text and not skip_text:
        inner.append(f'<div class="mm-text">{render_markdown(it.text)}</div>')
    elif it.text:  # the answer: shown once, under the steps (an empty step read as a broken one)
        inner.append('<div class="mm-text mm-answer-below" style="color:#6e7781;font-style:italic">'
                     "the answer, shown below</div>")
    if it.note and not skip_note:
        inner.append(note_html(it.note))
    for card in it.tools.values():
        inner.append(card_html(card))
    return (f'<details class="mm-iteration"{" open" if expanded else ""}><summary>{escape(summary)}</summary>'
            + "".join(inner) + "</details>")

_PRE = 'style="margin:2px 0;white-space:pre-wrap;flex:1;min-width:0"'


def _labelled(label: str, inner: str) -> str:
    """A card row: a small grey label ("arguments", "result", "error") beside what it labels."""
    return ('<div class="mm-tool-row" style="display:flex;gap:8px;align-items:baseline">'
            f'<span class="mm-tool-label" style="color:#6e7781;font-size:85%;min-width:5.5em">{label}</span>'
            f"{inner}</div>")


def _pretty_json(text: str) -> str:
    """A JSON object or array result indented as the arguments are (tools often return dicts); else as it is."""
    value = json_container(text) if len(text) <= 20_000 else None
    return json.dumps(value, indent=2, ensure_ascii=False) if value else text


def card_html(card: ToolCard) -> str:
    icon = ICON_SVG.get(card.state, "")
    dur = f" · {card.duration:.2f}s" if card.duration is not None else ""
    head = f"{icon} <b>{escape(card.name)}</b> · {escape(card.status_text())}{dur}"
    if card.approval in ("approved", "denied"):
        head = (f'<span class="mm-decision mm-decision-{card.approval}" data-by="{escape(card.approval_by or "")}"'
                f">{head}</span>")
    body = ""
    if card.state == "running" and card.progress_done is not None:
        frac = card.progress_fraction()
        bar = ""
        if frac is not None:
            bar = ('<span class="mm-tool-bar" style="display:inline-block;width:120px;height:8px;'
                   'background:#eaeef2;border-radius:4px;vertical-align:middle;margin-right:6px">'
                   f'<span style="display:block;height:8px;width:{frac * 100:.0f}%;background:#1f6feb;'
                   'border-radius:4px"></span></span>')
        body += f'<div class="mm-tool-progress">{bar}{escape(card.progress_text())}</div>'
    code = card.arguments.get("code") if isinstance(card.arguments, dict) else None
    if isinstance(code, str):  # code to run or propose: shown as code, highlighted, not as a JSON string
        body += code_html(code)
        rest = {k: v for k, v in card.arguments.items() if k != "code"}
        if rest:
            body += _labelled("arguments", f'<pre class="mm-args" {_PRE}>{escape(str(rest))}</pre>')
    elif card.arguments not in ({}, None, ""):  # a tool without parameters: no "{}" to read
        body += _labelled("arguments", f'<pre class="mm-args" {_PRE}>{escape(card.arguments_json())}</pre>')
    if card.state == "awaiting":
        # The panel's Approve / Deny controls go here (static/panel.js); other approvers: the note stays.
        body += (f'<div class="mm-approval-slot" data-call-id="{escape(card.call_id)}">'
                 '<span class="mm-approval-wait" style="color:#8250df">' + ICON_SVG["awaiting"]
                 + " waiting for a decision…</span></div>")
    shown = card.result if card.state == "ok" else (card.error or card.result)
    if card.state == "denied" and card.approval == "denied":
        shown = None  # the head says it: "denied (panel): not now"
    if shown is not None:
        label = "error" if card.state != "ok" and card.error else "result"
        shown = _pretty_json(shown)
        short = clip(shown, 200)
        if short == shown:
            body += _labelled(label, f'<pre class="mm-result" {_PRE}>{escape(shown)}</pre>')
        else:
            body += _labelled(label, f'<details class="mm-result"><summary>{escape(short)}</summary>'
                                     f'<pre style="white-space:pre-wrap">{escape(shown)}</pre></details>')
    for mime, data, description in card.attachments:
        if mime in ("image/png", "image/jpeg") and data:  # base64 only: nothing else can be injected here
            body += (f'<img class="mm-attachment" alt="{escape(description)}" title="{escape(description)}" '
                     f'src="data:{mime};base64,{escape(data)}" style="max-width:100%;display:block;margin:4px 0">')
        else:
            body += f'<div class="mm-attachment">[{escape(mime)}: {escape(description)}]</div>'
    return (f'<div class="mm-tool mm-tool-{escape(card.state)}" style="border:1px solid #d0d7de;'
            f'border-radius:6px;padding:4px 8px;margin:4px 0"><div>{head}</div>{body}</div>')

def code_html(code: str) -> str:
    """Python source as a highlighted block (pygments, inline styles; escaped text when it is missing)."""
    try:
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import PythonLexer
    except ImportError:
        inner = escape(code)
    else:
        inner = highlight(code, PythonLexer(), HtmlFormatter(nowrap=True, noclasses=True))
    return (f'<pre class="mm-code" style="margin:2px 0;padding:4px 6px;background:#f6f8fa;border-radius:4px;'
            f'white-space:pre-wrap">{inner}</pre>')

def batch_html(vm: RunViewModel) -> str:
    assert vm.batch is not None
    c = vm.batch_counts()
    rows = []
    short, text = f'style="{SHORT_CELL_STYLE}"', f'style="{CELL_STYLE};min-width:8em"'
    for row in vm.batch[:MAX_BATCH_ROWS]:
        body = row.answer if row.status == "ok" else (row.error or "")
        dur = f"{row.duration:.2f}s" if row.duration is not None else ""
        rows.append(f'<tr class="mm-row mm-row-{escape(row.status)}"><td {short}>{row.index + 1}</td>'
                    f"<td {text}>{escape(clip(row.message, 200))}</td><td {short}>{escape(row.status)}</td>"
                    f"<td {short}>{dur}</td>"
                    f'<td style="{WIDE_CELL_STYLE}">{escape(clip(body or "", 500))}</td></tr>')
    more = len(vm.batch) - MAX_BATCH_ROWS
    if more > 0:
        rows.append(f'<tr><td {short} colspan="5">+{more} more</td></tr>')
    counts = (f'<div class="mm-counts">{c["done"]} done · {c["failed"]} failed · {c["running"]} running · '
              f'{c["pending"]} pending</div>')
    head = "".join(f"<th {short}>{name}</th>" for name in ("#", "message", "status", "time", "answer / error"))
    return f'{counts}<table class="mm-batch" style="{TABLE_STYLE}"><tr>{head}</tr>{"".join(rows)}</table>'

def progress_html(vm: RunViewModel, with_bar: bool = True) -> str:
    done, total, label = vm.progress()
    color = STATUS_COLORS.get(vm.status, "#1f6feb") if vm.finished else "#1f6feb"
    bar = ""
    if with_bar:
        bar = ('<div class="mm-progress" style="display:inline-block;width:240px;height:10px;background:#eaeef2;'
               'border-radius:5px;vertical-align:middle;margin-right:8px">'
               f'<div class="mm-progress-fill" style="height:10px;width:{100 * done / max(total, 1):.0f}%;'
               f'background:{color};border-radius:5px"></div></div>')
    return f'<div class="mm-progress-row">{bar}<span class="mm-progress-label">{escape(label)}</span></div>'

def final_html(vm: RunViewModel) -> str:
    """The final view: status, progress, steps (collapsed), usage, and the answer once (Markdown)."""
    out = [f'<div class="mm-panel mm-final mm-final-{escape(vm.status)} {NO_TYPESET}" style="border:1px solid #d0d7de;'
           f'border-radius:8px;padding:8px 12px">', header_html(vm), progress_html(vm)]
    if vm.batch is not None:
        out.append(batch_html(vm))
    else:
        out.append(f'<div class="mm-task" style="color:#57606a">{escape(clip(vm.task, 300))}</div>')
        if vm.model_note:
            out.append(model_note_html(vm))
        steps = []
        if vm.dropped_iterations:
            steps.append(f"<div>… {vm.dropped_iterations} earlier iteration(s) not shown</div>")
        answer = vm.final_output.strip()
        noted_below = vm.output is None and bool(vm.final_output) and bool(vm.answer_note)
        for it in vm.iterations:
            # The answer (and its note) is shown once, below: not again inside the step that produced it.
            steps.append(iteration_html(vm, it, False, skip_text=bool(answer) and it.text.strip() == answer,
                                        skip_note=noted_below and it is vm.iterations[-1]))
        if steps:
            summary = (f"{vm.iteration_count} iteration(s) · {vm.tool_call_count} tool call(s) · "
                       f"{vm.usage_text()}")
            out.append(f'<details class="mm-steps"><summary>{escape(summary)}</summary>{"".join(steps)}'
                       "</details>")
        else:
            out.append(f'<div class="mm-usage">{escape(vm.usage_text())}</div>')
        decisions = vm.decision_lines()
        if decisions:  # visible without opening the steps
            out.append('<ul class="mm-decisions" style="margin:4px 0;padding-left:18px">'
                       + "".join(f"<li>{escape(line)}</li>" for line in decisions) + "</ul>")
    if vm.error:
        out.append(error_html(vm))
    elif vm.status == "cancelled":
        out.append(f'<div class="mm-cancelled" style="color:#6e7781">{ICON_SVG["cancelled"]} '
                   "the run was cancelled</div>")
    elif vm.stop_note():
        out.append(f'<div class="mm-stopped" style="color:#9a6700">{escape(vm.stop_note())}</div>')
    if vm.output is not None:
        out.append(f'<div class="mm-output">{output_html(vm.output)}</div>')
    elif vm.final_output:
        out.append(f'<div class="mm-answer">{render_markdown(clip(vm.final_output, MAX_ANSWER))}</div>')
        if vm.answer_note:  # e.g. the embedded model's answer was replaced by one written from the results
            out.append(note_html(vm.answer_note))
    out.append("</div>")
    return "".join(out)
