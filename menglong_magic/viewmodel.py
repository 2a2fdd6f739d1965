"""A plain model of what a run looks like, built only from events. Panel and text view render it.

No IPython or ipywidgets import: it is unit-testable and shared by both views.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from html import escape
from typing import Any

from . import events as ev

MAX_TEXT = 4000  # characters of streamed text kept per iteration in the view
MAX_RESULT = 2000  # characters of a tool result kept in the view
EXPANDED_ITERATIONS = 3  # the most recent iterations stay expanded
MAX_ITERATIONS_SHOWN = 50  # older iterations are summarised in one line
MAX_BATCH_ROWS = 200

STATUS_LABELS = {
    "running": "running",
    "completed": "completed",
    "max_iterations": "max iterations",
    "timeout": "timeout",
    "cancelled": "cancelled",
    "error": "error",
}
STATUS_COLORS = {
    "running": "#1f6feb",
    "completed": "#1a7f37",
    "max_iterations": "#9a6700",
    "timeout": "#9a6700",
    "cancelled": "#6e7781",
    "error": "#cf222e",
}


def clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"… [{len(text) - limit} more characters]"


@dataclass
class ToolCard:
    call_id: str
    name: str
    arguments: Any
    state: str = "running"  # running → ok / error
    duration: float | None = None
    result: str | None = None
    error: str | None = None

    def arguments_json(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments, indent=2, ensure_ascii=False, default=str)


@dataclass
class IterationView:
    number: int
    text: str = ""
    tools: dict[str, ToolCard] = field(default_factory=dict)
    duration: float | None = None
    finished: bool = False


@dataclass
class BatchRow:
    index: int
    message: str
    status: str = "pending"
    duration: float | None = None
    answer: str | None = None
    error: str | None = None


class RunViewModel:
    """Folds events into view state. The first run/batch seen is the one this view shows."""

    def __init__(self, title: str = "agent") -> None:
        self.title = title
        self.run_id: str | None = None
        self.agent = ""
        self.model = ""
        self.mode = ""
        self.task = ""
        self.status = "running"
        self.max_iterations = 0
        self.iterations: list[IterationView] = []
        self.dropped_iterations = 0
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.started = time.monotonic()
        self.finished_at: float | None = None
        self.final_output = ""
        self.error: str | None = None
        self.retries = 0
        self.batch: list[BatchRow] | None = None
        self.batch_mode = ""
        self.version = 0  # bumps on every change: views flush only when it moved

    # ------------------------------------------------------------------ folding
    def apply(self, event: ev.Event) -> None:
        self.version += 1
        if isinstance(event, ev.ModelResponseReceived) and event.usage is not None:
            if event.usage.input_tokens is not None:
                self.input_tokens = (self.input_tokens or 0) + event.usage.input_tokens
            if event.usage.output_tokens is not None:
                self.output_tokens = (self.output_tokens or 0) + event.usage.output_tokens
        if isinstance(event, ev.BatchStarted) and self.run_id is None:
            self.run_id = event.run_id
            self.batch_mode = event.mode
            self.batch = [BatchRow(i, m) for i, m in enumerate(event.messages)]
            self.task = f"{len(event.messages)} messages ({event.mode})"
            return
        if isinstance(event, ev.WorkflowStepStarted) and self.run_id in (None, event.run_id):
            if self.batch is None:
                self.run_id, self.batch_mode, self.batch = event.run_id, "workflow", []
                self.task = "workflow"
            while len(self.batch) <= event.index:
                self.batch.append(BatchRow(len(self.batch), ""))
            self.batch[event.index].message = event.name
            self.batch[event.index].status = "running"
            return
        if isinstance(event, ev.RunStarted):
            if self.run_id is None:
                self.run_id = event.run_id
                self.task = event.task
                self.max_iterations = event.max_iterations
            if not self.agent:
                self.agent, self.model, self.mode = event.agent, event.model, event.mode
            return
        if self.batch is not None:
            self._apply_batch(event)
            return
        if event.run_id != self.run_id:
            return
        if isinstance(event, ev.IterationStarted):
            self.max_iterations = event.max_iterations
            self.iterations.append(IterationView(event.iteration))
            if len(self.iterations) > MAX_ITERATIONS_SHOWN:
                self.iterations.pop(0)
                self.dropped_iterations += 1
        elif isinstance(event, ev.TextDelta):
            it = self._iteration()
            if it is not None:
                text = it.text + event.delta
                # Bounded memory; keep the newest text, which is what a live view is for.
                it.text = text if len(text) <= MAX_TEXT else "…" + text[-MAX_TEXT:]
        elif isinstance(event, ev.ModelResponseReceived):
            it = self._iteration()
            if it is not None and event.text and not it.text:
                it.text = clip(event.text, MAX_TEXT)  # non-streamed answer
        elif isinstance(event, ev.ToolCallStarted):
            it = self._iteration()
            if it is not None:
                it.tools[event.call_id] = ToolCard(event.call_id, event.name, event.arguments)
        elif isinstance(event, ev.ToolCallFinished):
            it = self._iteration()
            card = it.tools.get(event.call_id) if it is not None else None
            if card is not None:
                card.state = "ok" if event.ok else "error"
                card.duration = event.duration
                card.result = clip(event.result, MAX_RESULT) if event.result is not None else None
                card.error = clip(event.error, MAX_RESULT) if event.error is not None else None
        elif isinstance(event, ev.IterationFinished):
            it = self._iteration()
            if it is not None:
                it.finished, it.duration = True, event.duration
        elif isinstance(event, ev.Retry):
            self.retries += 1
            it = self._iteration()
            if it is not None:
                it.text = ""  # the retried request streams its answer again from the start
        elif isinstance(event, ev.RunFinished):
            self._finish(event.result.stop_reason, event.result.final_output, event.result.error)

    def _apply_batch(self, event: ev.Event) -> None:
        assert self.batch is not None
        if event.run_id != self.run_id:
            return
        if isinstance(event, ev.BatchItemStarted) and event.index < len(self.batch):
            self.batch[event.index].status = "running"
        elif isinstance(event, ev.BatchItemFinished) and event.index < len(self.batch):
            row = self.batch[event.index]
            row.status, row.duration = event.status, event.duration
            row.answer = clip(event.result, MAX_RESULT) if event.result is not None else None
            row.error = clip(event.error, MAX_RESULT) if event.error is not None else None
        elif isinstance(event, ev.WorkflowStepFinished):
            while len(self.batch) <= event.index:
                self.batch.append(BatchRow(len(self.batch), event.name))
            row = self.batch[event.index]
            row.message, row.status, row.duration = event.name, event.status, event.duration
            row.answer = clip(str(event.output), MAX_RESULT) if event.output is not None else None
            row.error = clip(event.error, MAX_RESULT) if event.error is not None else None
        elif isinstance(event, (ev.BatchFinished, ev.WorkflowFinished)):
            status = "completed" if event.failed == 0 else "error"
            if any(r.status == "cancelled" for r in self.batch):
                status = "cancelled"
            self._finish(status, "", None if event.failed == 0 else f"{event.failed} item(s) failed")

    def _finish(self, status: str, output: str, error: str | None) -> None:
        self.status = status
        self.final_output = output
        self.error = error
        self.finished_at = time.monotonic()
        for it in self.iterations:
            it.finished = True

    def mark_cancelled(self) -> None:
        """Used when a run ends without a RunFinished event reaching the view."""
        if self.finished_at is None:
            self._finish("cancelled", self.final_output, None)
            self.version += 1

    def _iteration(self) -> IterationView | None:
        return self.iterations[-1] if self.iterations else None

    # ------------------------------------------------------------------ derived
    @property
    def elapsed(self) -> float:
        return (self.finished_at or time.monotonic()) - self.started

    @property
    def tokens(self) -> int | None:
        if self.input_tokens is None and self.output_tokens is None:
            return None
        return (self.input_tokens or 0) + (self.output_tokens or 0)

    @property
    def tool_call_count(self) -> int:
        return sum(len(it.tools) for it in self.iterations)

    @property
    def iteration_count(self) -> int:
        return len(self.iterations) + self.dropped_iterations

    def batch_counts(self) -> dict[str, int]:
        rows = self.batch or []
        return {
            "done": sum(r.status == "ok" for r in rows),
            "failed": sum(r.status in ("error", "cancelled") for r in rows),
            "running": sum(r.status == "running" for r in rows),
            "pending": sum(r.status == "pending" for r in rows),
        }

    def summary_text(self) -> str:
        tokens = "tokens unknown" if self.tokens is None else f"{self.tokens} tokens"
        if self.batch is not None:
            c = self.batch_counts()
            what = "workflow of" if self.batch_mode == "workflow" else "batch of"
            head = (f"[{self.title}] {STATUS_LABELS.get(self.status, self.status)} · {what} {len(self.batch)}: "
                    f"{c['done']} done, {c['failed']} failed · {self.elapsed:.1f}s · {tokens}")
            lines = [head]
            for row in self.batch:
                body = row.answer if row.status == "ok" else (row.error or row.status)
                lines.append(f"  {row.index + 1}. {clip(row.message, 60)} → {clip(body or '', 200)}")
            return "\n".join(lines)
        head = (f"[{self.title}] {STATUS_LABELS.get(self.status, self.status)} · {self.iteration_count} iteration(s)"
                f" · {self.tool_call_count} tool call(s) · {self.elapsed:.1f}s · {tokens}")
        lines = [head]
        if self.error:
            lines.append(f"error: {self.error}")
        if self.final_output:
            lines.append(clip(self.final_output, MAX_TEXT))
        return "\n".join(lines)

    # ------------------------------------------------------------------ HTML (always escaped)
    def badge_html(self) -> str:
        color = STATUS_COLORS.get(self.status, "#6e7781")
        label = escape(STATUS_LABELS.get(self.status, self.status))
        return (f'<span class="mm-status mm-status-{escape(self.status)}" style="background:{color};color:white;'
                f'border-radius:8px;padding:1px 8px;font-size:85%">{label}</span>')

    def header_html(self) -> str:
        tokens = "–" if self.tokens is None else str(self.tokens)
        parts = [
            f"<b>{escape(self.title)}</b>",
            self.badge_html(),
            f'<span class="mm-meta">{escape(self.model)} · {escape(self.mode)}</span>',
            f'<span class="mm-elapsed">{self.elapsed:.1f}s</span>',
            f'<span class="mm-tokens">tokens: {escape(tokens)}</span>',
        ]
        if self.retries:
            parts.append(f'<span class="mm-retries">retries: {self.retries}</span>')
        return '<div class="mm-header" style="display:flex;gap:10px;align-items:center">' + "".join(parts) + "</div>"

    def body_html(self) -> str:
        if self.batch is not None:
            return self._batch_html()
        out = [f'<div class="mm-task" style="color:#57606a">{escape(clip(self.task, 300))}</div>']
        if self.dropped_iterations:
            out.append(f"<div>… {self.dropped_iterations} earlier iteration(s) not shown</div>")
        recent = {it.number for it in self.iterations[-EXPANDED_ITERATIONS:]}
        for it in self.iterations:
            open_attr = " open" if (it.number in recent or not it.finished) else ""
            state = f"{it.duration:.2f}s" if it.duration is not None else "running…"
            summary = f"iteration {it.number} · {len(it.tools)} tool call(s) · {state}"
            inner = []
            if it.text:
                inner.append(f'<div class="mm-text" style="white-space:pre-wrap">{escape(it.text)}</div>')
            for card in it.tools.values():
                inner.append(self._card_html(card))
            out.append(f'<details class="mm-iteration"{open_attr}><summary>{escape(summary)}</summary>'
                       + "".join(inner) + "</details>")
        if self.error:
            out.append(f'<div class="mm-error" style="color:#cf222e">{escape(self.error)}</div>')
        return "".join(out)

    @staticmethod
    def _card_html(card: ToolCard) -> str:
        icon = {"running": "⏳", "ok": "✓", "error": "✗"}.get(card.state, "")
        dur = f" · {card.duration:.2f}s" if card.duration is not None else ""
        head = f"{icon} {escape(card.name)} · {escape(card.state)}{dur}"
        body = f'<pre class="mm-args" style="margin:2px 0">{escape(card.arguments_json())}</pre>'
        shown = card.error if card.state == "error" else card.result
        if shown is not None:
            short = clip(shown, 200)
            if short == shown:
                body += f'<pre class="mm-result" style="margin:2px 0;white-space:pre-wrap">{escape(shown)}</pre>'
            else:
                body += (f'<details class="mm-result"><summary>{escape(short)}</summary>'
                         f'<pre style="white-space:pre-wrap">{escape(shown)}</pre></details>')
        return (f'<div class="mm-tool mm-tool-{escape(card.state)}" style="border:1px solid #d0d7de;'
                f'border-radius:6px;padding:4px 8px;margin:4px 0"><div>{head}</div>{body}</div>')

    def _batch_html(self) -> str:
        assert self.batch is not None
        c = self.batch_counts()
        rows = []
        for row in self.batch[:MAX_BATCH_ROWS]:
            body = row.answer if row.status == "ok" else (row.error or "")
            dur = f"{row.duration:.2f}s" if row.duration is not None else ""
            rows.append(f'<tr class="mm-row mm-row-{escape(row.status)}"><td>{row.index + 1}</td>'
                        f"<td>{escape(clip(row.message, 200))}</td><td>{escape(row.status)}</td><td>{dur}</td>"
                        f'<td style="white-space:pre-wrap">{escape(clip(body or "", 500))}</td></tr>')
        more = len(self.batch) - MAX_BATCH_ROWS
        if more > 0:
            rows.append(f'<tr><td colspan="5">+{more} more</td></tr>')
        counts = (f'<div class="mm-counts">{c["done"]} done · {c["failed"]} failed · {c["running"]} running · '
                  f'{c["pending"]} pending</div>')
        return (counts + '<table class="mm-batch"><tr><th>#</th><th>message</th><th>status</th><th>time</th>'
                "<th>answer / error</th></tr>" + "".join(rows) + "</table>")

    def record_html(self) -> str:
        """The static record kept in saved notebooks."""
        return (f'<div class="mm-record">{self.header_html()}'
                f'<div>{self.iteration_count} iteration(s) · {self.tool_call_count} tool call(s)</div>'
                + (f'<div style="white-space:pre-wrap">{escape(self.final_output)}</div>' if self.final_output else "")
                + (self._batch_html() if self.batch is not None else "")
                + (f'<div style="color:#cf222e">{escape(self.error)}</div>' if self.error else "")
                + "</div>")
