"""A plain model of what a run looks like, built only from events (the fold); ui/html.py renders it as HTML.

No IPython or ipywidgets import: it is unit-testable and shared by both views.

Safety: every piece of model or tool text reaches HTML either through :func:`html.escape` or through
:func:`render_markdown` (markdown-it-py, CommonMark, raw HTML disabled, unsafe link schemes refused), so
nothing a model or a tool writes is ever executed by a front end.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from .. import events as ev
from ..markup import clip, shorten
from ..usage import format_cost

MAX_TEXT = 4000  # characters of streamed text kept per iteration in the view
MAX_ANSWER = 20000  # characters of the final answer rendered in the final view
MAX_RESULT = 2000  # characters of a tool result kept in the view
MAX_ATTACHMENTS = 4  # images kept per tool card
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
MAX_ATTACHMENT_BYTES = 2_000_000  # base64 characters of one attachment shown (larger: described only)
EXPANDED_ITERATIONS = 3  # the most recent iterations stay expanded
MAX_ITERATIONS_SHOWN = 50  # older iterations are summarised in one line
MAX_BATCH_ROWS = 200

STATUS_LABELS = {
    "waiting": "waiting",
    "running": "running",
    "completed": "completed",
    "max_iterations": "max iterations",
    "timeout": "timeout",
    "cancelled": "cancelled",
    "error": "error",
    "usage_limit": "usage limit",
    "output_invalid": "invalid output",
    "no_answer": "no answer",
}
STATUS_COLORS = {
    "waiting": "#8250df",
    "running": "#1f6feb",
    "completed": "#1a7f37",
    "max_iterations": "#9a6700",
    "timeout": "#9a6700",
    "cancelled": "#6e7781",
    "error": "#cf222e",
    "usage_limit": "#9a6700",
    "output_invalid": "#cf222e",
    "no_answer": "#9a6700",
}
#: Marks of a tool call's state in text (the text view, text/plain): symbols that ordinary fonts have, no emoji
#: (a browser or terminal without an emoji font shows those as empty boxes). The HTML uses :data:`ICON_SVG`.
TOOL_ICONS = {"running": "…", "awaiting": "?", "ok": "✓", "error": "✗", "cancelled": "■", "denied": "⊘"}
MAX_REASON = 500  # characters of a denial reason shown


def describe_decision(approved: bool, by: str | None, reason: str | None) -> str:
    """``approved (panel)`` / ``denied (panel): not now`` (the wording of ``ApprovalDecision.describe``)."""
    who = f" ({by})" if by else ""
    if approved:
        return f"approved{who}"
    return f"denied{who}" + (f": {clip(reason, MAX_REASON)}" if reason else "")


def call_arguments_text(arguments: Any) -> str:
    """A call's arguments as the views write them: ``to='ann', n=2`` (a raw string as it came)."""
    if isinstance(arguments, str):
        return arguments
    return ", ".join(f"{k}={v!r}" for k, v in (arguments or {}).items())


# ---------------------------------------------------------------------- state
@dataclass
class ToolCard:
    call_id: str
    name: str
    arguments: Any
    state: str = "running"  # running → ok / error / cancelled; awaiting (approval) → running / denied / cancelled
    duration: float | None = None
    result: str | None = None
    error: str | None = None
    progress_done: float | None = None
    progress_total: float | None = None
    progress_note: str = ""
    approval: str | None = None  # None (not gated) | "pending" | "approved" | "denied"
    approval_by: str | None = None
    approval_reason: str | None = None
    #: Rich outputs the tool attached (``RunContext.attach``): (mime, base64, description), at most MAX_ATTACHMENTS.
    attachments: list[tuple[str, str, str]] = field(default_factory=list)

    def decision_text(self) -> str:
        """``approved (panel)``, ``denied (prompt): not now``, ``awaiting approval``; "" when not gated."""
        if self.approval in ("approved", "denied"):
            return describe_decision(self.approval == "approved", self.approval_by, self.approval_reason)
        if self.approval == "pending":
            return "awaiting approval" if self.state == "awaiting" else "not approved"
        return ""

    def status_text(self) -> str:
        """The card's state with its decision: ``ok · approved (panel)``, ``denied (panel): not now``."""
        decision = self.decision_text()
        if self.state == "awaiting":
            return "awaiting approval"
        if self.state == "denied" and self.approval == "denied":
            return decision
        if self.state == "cancelled" and self.approval == "pending":
            return "cancelled while awaiting approval"
        return f"{self.state} · {decision}" if decision else self.state

    def arguments_json(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments, indent=2, ensure_ascii=False, default=str)

    def progress_text(self) -> str:
        if self.progress_done is None:
            return ""
        done = _num(self.progress_done)
        text = f"{done}/{_num(self.progress_total)}" if self.progress_total else done
        return f"{text} {self.progress_note}".strip()

    def progress_fraction(self) -> float | None:
        if self.progress_done is None or not self.progress_total:
            return None
        return max(0.0, min(1.0, self.progress_done / self.progress_total))


def _num(x: float | None) -> str:
    if x is None:
        return "?"
    return str(int(x)) if float(x).is_integer() else f"{x:.3g}"


@dataclass
class IterationView:
    number: int
    text: str = ""
    tools: dict[str, ToolCard] = field(default_factory=dict)
    duration: float | None = None
    finished: bool = False
    #: time.monotonic() when a model request was sent and nothing of its answer has come yet (a slow local model
    #: can take many seconds to decide; the summary then says so instead of a bare "running…").
    model_since: float | None = None
    #: The model layer's word on this iteration's answer ("answer assembled from the tool results: ...").
    note: str | None = None


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
        self.dropped_tool_calls = 0
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.requests = 0
        self.unreported_requests = 0
        self.cost: float | None = 0.0  # US dollars so far; None once any request's price is unknown
        self.output: Any = None  # the run's typed answer (output_type), shown as a small table
        self.started = time.monotonic()
        self.finished_at: float | None = None
        self.final_output = ""
        self.error: str | None = None
        self.retries = 0
        self.model_note = ""  # "starting the local model…", then "local model started in 3.2s"
        self.waiting_ahead: int | None = None  # earlier turns of the conversation still ahead of this run
        self.waited: float | None = None
        self.batch: list[BatchRow] | None = None
        self.batch_mode = ""
        self.version = 0  # bumps on every change: views flush only when it moved

    # ------------------------------------------------------------------ folding
    def apply(self, event: ev.Event) -> None:
        self.version += 1
        if isinstance(event, ev.ModelResponseReceived) and (self.run_id is None or self.batch is not None
                                                            or event.run_id == self.run_id):
            self.requests += 1
            self.cost = None if self.cost is None or event.cost is None else self.cost + event.cost
            if event.usage is None or event.usage.total_tokens is None:
                self.unreported_requests += 1
            else:
                if event.usage.input_tokens is not None:
                    self.input_tokens = (self.input_tokens or 0) + event.usage.input_tokens
                if event.usage.output_tokens is not None:
                    self.output_tokens = (self.output_tokens or 0) + event.usage.output_tokens
        if isinstance(event, (ev.TurnWaiting, ev.TurnResumed)) and self.run_id in (None, event.run_id):
            if isinstance(event, ev.TurnWaiting):
                self.waiting_ahead = event.ahead
                if self.finished_at is None:
                    self.status = "waiting"
            else:
                self.waiting_ahead, self.waited = None, event.waited
                if self.status == "waiting":
                    self.status = "running"
            return
        if isinstance(event, (ev.ModelStarting, ev.ModelReady)) and self.run_id in (None, event.run_id):
            self.model_note = event.note
            return
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
            if self.status == "waiting":
                self.status, self.waiting_ahead = "running", None
            self.iterations.append(IterationView(event.iteration))
            if len(self.iterations) > MAX_ITERATIONS_SHOWN:
                dropped = self.iterations.pop(0)
                self.dropped_iterations += 1
                self.dropped_tool_calls += len(dropped.tools)
        elif isinstance(event, ev.ModelRequestStarted):
            it = self._iteration()
            if it is not None:
                it.model_since = time.monotonic()
        elif isinstance(event, ev.TextDelta):
            it = self._iteration()
            if it is not None:
                it.model_since = None
                text = it.text + event.delta
                # Bounded memory; keep the newest text, which is what a live view is for.
                it.text = text if len(text) <= MAX_TEXT else "…" + text[-MAX_TEXT:]
        elif isinstance(event, ev.ModelResponseReceived):
            it = self._iteration()
            if it is not None:
                it.model_since = None
                it.note = event.note
            if it is not None and event.text and not it.text:
                it.text = clip(event.text, MAX_TEXT)  # non-streamed answer
        elif isinstance(event, ev.ToolCallStarted):
            it = self._iteration()
            if it is not None:
                # A tool whose name the API does not accept shows both: "fs.read (as fs_read)".
                shown = event.name if event.api_name is None else f"{event.name} (as {event.api_name})"
                it.tools[event.call_id] = ToolCard(event.call_id, shown, event.arguments)
        elif isinstance(event, ev.ApprovalRequested):
            card = self.card(event.call_id)
            if card is None and (it := self._iteration()) is not None:
                card = it.tools[event.call_id] = ToolCard(event.call_id, event.name, event.arguments)
            if card is not None and card.state == "running":
                card.state, card.approval = "awaiting", "pending"
        elif isinstance(event, ev.ApprovalDecided):
            card = self.card(event.call_id)
            if card is not None:
                card.approval = "approved" if event.approved else "denied"
                card.approval_by = event.by
                card.approval_reason = clip(event.reason, MAX_REASON) if event.reason else None
                if card.state == "awaiting":
                    card.state = "running" if event.approved else "denied"
        elif isinstance(event, ev.ToolProgress):
            card = self.card(event.call_id)
            if card is not None and card.state == "running":
                card.progress_done, card.progress_total = event.done, event.total
                card.progress_note = clip(event.note or "", 200)
        elif isinstance(event, ev.ToolAttachment):
            card = self.card(event.call_id)
            if card is not None and len(card.attachments) < MAX_ATTACHMENTS:
                # Only well-formed base64 is kept: it is placed inside an HTML attribute as a data: URI.
                ok = len(event.data) <= MAX_ATTACHMENT_BYTES and _BASE64.fullmatch(event.data) is not None
                data = event.data if ok else ""
                card.attachments.append((event.mime, data, clip(event.description, 200)))
        elif isinstance(event, ev.ToolCallFinished):
            card = self.card(event.call_id)
            if card is not None:
                card.state = event.status or ("ok" if event.ok else "error")
                card.duration = event.duration
                card.result = clip(event.result, MAX_RESULT) if event.result is not None else None
                card.error = clip(event.error, MAX_RESULT) if event.error is not None else None
        elif isinstance(event, ev.IterationFinished):
            it = self._iteration()
            if it is not None:
                it.finished, it.duration, it.model_since = True, event.duration, None
        elif isinstance(event, ev.Retry):
            self.retries += 1
            it = self._iteration()
            if it is not None:
                it.text = ""  # the retried request streams its answer again from the start
        elif isinstance(event, ev.RunFinished):
            self.output = getattr(event.result, "output", None)
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
        self.waiting_ahead = None
        self.finished_at = time.monotonic()
        for it in self.iterations:
            it.finished = True
            for card in it.tools.values():
                if card.state == "awaiting" and card.error is None:
                    card.error = "cancelled while awaiting approval (not executed)"
                if card.state in ("running", "awaiting"):
                    card.state = "cancelled"
        for row in self.batch or ():
            if row.status in ("pending", "running") and status != "completed":
                row.status = "cancelled"

    def mark_cancelled(self) -> None:
        """Used when a run ends without a RunFinished event reaching the view."""
        if self.finished_at is None:
            self._finish("cancelled", self.final_output, None)
            self.version += 1

    @property
    def answer_note(self) -> str | None:
        """The note on the latest response (shown with the answer it explains): the last iteration's."""
        return self.iterations[-1].note if self.iterations else None

    def _iteration(self) -> IterationView | None:
        return self.iterations[-1] if self.iterations else None

    def card(self, call_id: str) -> ToolCard | None:
        for it in reversed(self.iterations):
            card = it.tools.get(call_id)
            if card is not None:
                return card
        return None

    # ------------------------------------------------------------------ derived
    @property
    def finished(self) -> bool:
        return self.finished_at is not None

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
        return sum(len(it.tools) for it in self.iterations) + self.dropped_tool_calls

    @property
    def iteration_count(self) -> int:
        return len(self.iterations) + self.dropped_iterations

    def gated_calls(self) -> list[ToolCard]:
        """The calls that needed approval, in order (their decision or that they are still waiting)."""
        return [card for it in self.iterations for card in it.tools.values() if card.approval is not None]

    def decision_lines(self) -> list[str]:
        """One line per gated call, with its arguments (which address was refused):
        ``✓ lookup(name='ann') approved (panel)``, ``✗ send_email(to='eve') denied (panel): not now``."""
        lines = []
        for card in self.gated_calls():
            if card.approval == "approved":
                mark = "✓"
            elif card.approval == "denied":
                mark = "✗"
            else:
                mark = TOOL_ICONS.get(card.state, "")
            text = card.decision_text() if card.approval != "pending" else card.status_text()
            arguments = shorten(call_arguments_text(card.arguments), 80)
            lines.append(f"{mark} {card.name}{f'({arguments})' if arguments else ''} {text}")
        return lines

    def batch_counts(self) -> dict[str, int]:
        rows = self.batch or []
        return {
            "done": sum(r.status == "ok" for r in rows),
            "failed": sum(r.status in ("error", "cancelled") for r in rows),
            "running": sum(r.status == "running" for r in rows),
            "pending": sum(r.status == "pending" for r in rows),
        }

    def tokens_text(self) -> str:
        """"42 tokens"; "usage not reported by this model" when no response said its usage; "tokens unknown"
        before any response. One phrase, used by every view (never "–" in one place and "unknown" in another)."""
        if self.tokens is not None:
            return f"{self.tokens} tokens"
        return "usage not reported by this model" if self.unreported_requests else "tokens unknown"

    def usage_text(self) -> str:
        if self.tokens is None:
            return self.tokens_text()
        text = f"{self.tokens} tokens ({self.input_tokens or 0} in, {self.output_tokens or 0} out)"
        if self.unreported_requests:  # said once, here; the header and summary line show only the total
            text += f", usage of {self.unreported_requests} request(s) not reported by this model"
        cost = self.cost_text()
        return f"{text}, {cost}" if cost else text

    def cost_text(self) -> str:
        """"$0.00021" when every request's price is known (genai-prices), else "" (never a guess)."""
        if self.cost is None or not self.requests:
            return ""
        return format_cost(self.cost)

    def progress(self) -> tuple[int, int, str]:
        """(done, total, label) of the progress bar. Complete when the run completed."""
        if self.batch is not None:
            total = max(len(self.batch), 1)
            done = sum(r.status not in ("pending", "running") for r in self.batch)
            label = f"{done} / {len(self.batch)} items"
            if self.finished:
                label = f"{STATUS_LABELS.get(self.status, self.status)} · {label}"
            return min(done, total), total, label
        total, done = max(self.max_iterations, 1), self.iteration_count
        if self.status == "waiting":
            return 0, total, self.waiting_text()
        if self.finished:
            label = f"{STATUS_LABELS.get(self.status, self.status)} · {self.iteration_count} iteration(s)"
            if self.status == "completed":
                return total, total, label  # the bar is full: the run needed no more iterations
            return min(done, total), total, label + f" of {self.max_iterations}"
        return min(done, total), total, f"iteration {done} / {self.max_iterations}"

    def waiting_text(self) -> str:
        n = self.waiting_ahead or 0
        return f"waiting for {n} earlier turn{'s' if n != 1 else ''} of this conversation"

    def summary_line(self) -> str:
        """The first, stable line of the text/plain form (durations are sanitised by nbval's config)."""
        status = STATUS_LABELS.get(self.status, self.status)
        tokens = self.tokens_text()
        if self.batch is not None:
            c = self.batch_counts()
            what = "workflow of" if self.batch_mode == "workflow" else "batch of"
            return (f"[{self.title}] {status} · {what} {len(self.batch)}: "
                    f"{c['done']} done, {c['failed']} failed · {self.elapsed:.1f}s · {tokens}")
        return (f"[{self.title}] {status} · {self.iteration_count} iteration(s)"
                f" · {self.tool_call_count} tool call(s) · {self.elapsed:.1f}s · {tokens}")

    def stop_note(self) -> str:
        """Why a run that ended without an error stopped early; "" when nothing needs saying."""
        if self.status == "max_iterations" and not self.error:
            return (f"stopped at the iteration cap ({self.max_iterations}) while the model was still calling tools: "
                    "raise --max-iterations (max_iterations=) to let it finish")
        return ""

    def summary_text(self) -> str:
        """Summary line, then the error and the answer (batches: one line per item)."""
        lines = [self.summary_line()]
        if self.batch is not None:
            for row in self.batch:
                body = row.answer if row.status == "ok" else (row.error or row.status)
                lines.append(f"  {row.index + 1}. {clip(row.message, 60)} → {clip(body or '', 200)}")
            return "\n".join(lines)
        lines.extend(f"  {line}" for line in self.decision_lines())
        if self.error:
            lines.append(f"error: {self.error}")
        elif self.stop_note():
            lines.append(self.stop_note())
        if self.output is not None:
            lines.append(f"output: {clip(repr(self.output), MAX_ANSWER)}")
        elif self.final_output:
            lines.append(clip(self.final_output, MAX_ANSWER))
        return "\n".join(lines)
