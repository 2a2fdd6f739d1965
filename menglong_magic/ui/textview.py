"""A compact text view of a run, for terminals and ``-q``. Renders the same events as the panel."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from .. import events as ev
from ..markup import clip, terminal_safe
from .state import MAX_ANSWER, TOOL_ICONS, RunViewModel, call_arguments_text, describe_decision


class TextView:
    """Prints one line per step (iteration, tool call, batch item) as the run goes, then at the end the
    summary line and the answer, once (streamed text that already was the answer is not repeated).

    ``compact=True`` (``-q``) prints only the summary line and the answer.
    """

    PROGRESS_INTERVAL = 1.0  # seconds between two progress lines of one tool call

    def __init__(self, title: str = "agent", compact: bool = False, stream: TextIO | None = None) -> None:
        self.model = RunViewModel(title)
        self.compact = compact
        self._stream = stream
        self._in_text = False
        self._finished = False
        self._streamed = ""  # the text streamed by the current iteration
        self._progress_at: dict[str, float] = {}
        self._noted: str | None = None  # the answer note printed under a streamed answer

    @property
    def out(self) -> TextIO:
        return self._stream or sys.stdout

    def _line(self, text: str) -> None:
        if self._in_text:
            self.out.write("\n")
            self._in_text = False
        self.out.write(terminal_safe(text) + "\n")  # model/tool text never drives the terminal
        self.out.flush()

    def show(self) -> None:
        pass

    def handle(self, event: ev.Event) -> None:
        model = self.model
        mine = model.run_id is None or event.run_id == model.run_id
        model.apply(event)
        if self.compact:
            return
        title = model.title
        if model.batch is not None:
            if isinstance(event, ev.WorkflowStepFinished) and event.run_id == model.run_id:
                body = repr(event.output) if event.status == "ok" else (event.error or "")
                self._line(f"[{title}] step {event.name} {event.status} {event.duration:.2f}s: {clip(body, 200)}")
            if isinstance(event, ev.BatchItemFinished) and event.run_id == model.run_id:
                body = event.result if event.status == "ok" else (event.error or event.status)
                self._line(f"[{title}] item {event.index + 1} {event.status} {event.duration:.2f}s: "
                           f"{clip(body or '', 200)}")
            return
        if isinstance(event, ev.TurnWaiting) and mine:
            self._line(f"[{title}] {model.waiting_text()}")
        elif isinstance(event, ev.TurnResumed) and mine:
            self._line(f"[{title}] resumed after {event.waited:.1f}s")
        if not mine:
            return
        if isinstance(event, (ev.ModelStarting, ev.ModelReady)):
            self._line(f"[{title}] {event.note}")
        elif isinstance(event, ev.IterationStarted):
            self._streamed = ""
            self._line(f"[{title}] iteration {event.iteration}/{event.max_iterations}")
        elif isinstance(event, ev.ModelResponseReceived) and event.note and self._streamed.strip():
            self._line(f"  ⓘ {event.note}")  # under the streamed answer it explains (else with the answer, at the end)
            self._noted = event.note
        elif isinstance(event, ev.Retry):
            self._streamed = ""
            self._line(f"  ↻ retry {event.attempt} in {event.delay:.1f}s: {event.error}")
        elif isinstance(event, ev.TextDelta):
            if not self._in_text:
                self.out.write("  ")
                self._in_text = True
            self._streamed += event.delta
            self.out.write(terminal_safe(event.delta).replace("\n", "\n  "))
            self.out.flush()
        elif isinstance(event, ev.ToolProgress):
            now = time.monotonic()
            last = self._progress_at.get(event.call_id)
            final = event.total is not None and event.done >= event.total
            if last is None or final or now - last >= self.PROGRESS_INTERVAL:
                self._progress_at[event.call_id] = now
                card = model.card(event.call_id)
                text = card.progress_text() if card is not None else f"{event.done}"
                self._line(f"  … {event.name} {text}")
        elif isinstance(event, ev.ToolAttachment):
            self._line(f"  🖼 {event.name}: {event.description or event.mime} ")
        elif isinstance(event, ev.ToolCallStarted):
            args = call_arguments_text(event.arguments)
            sent_as = f" (as {event.api_name})" if event.api_name else ""
            self._line(f"  → {event.name}({clip(args, 200)}){sent_as}")
        elif isinstance(event, ev.ApprovalRequested):
            self._line(f"  {TOOL_ICONS['awaiting']} {event.name} awaiting approval")
        elif isinstance(event, ev.ApprovalDecided):
            mark = "✓" if event.approved else "✗"
            self._line(f"  {mark} {event.name} {describe_decision(event.approved, event.by, event.reason)}")
        elif isinstance(event, ev.ToolCallFinished):
            status = event.status or ("ok" if event.ok else "error")
            card = model.card(event.call_id)
            if status == "denied" and card is not None and card.approval == "denied":
                return  # the decision line above said it
            mark = TOOL_ICONS.get(status, "✗")
            body = event.result if status == "ok" else (event.error or event.result or status)
            self._line(f"  {mark} {event.name} {event.duration:.2f}s: {clip(body or '', 200)}")

    def finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        model = self.model
        if model.finished_at is None:
            model.mark_cancelled()
        # The magic no longer shows the RunResult: this is the answer's one appearance.
        lines = [model.summary_line()]
        if model.batch is not None:
            if self.compact:
                lines = model.summary_text().split("\n")
        else:
            if self.compact:  # the full view printed each decision as it came
                lines.extend(f"  {line}" for line in model.decision_lines())
            if model.error:
                lines.append(f"error: {model.error}")
            answer = model.final_output
            if model.output is not None:  # a typed answer: its value, not the JSON text
                lines.append(f"output: {clip(repr(model.output), MAX_ANSWER)}")
            elif answer and (self.compact or self._streamed.strip() != answer.strip()):
                lines.append(clip(answer, MAX_ANSWER))
            if answer and model.answer_note and model.answer_note != self._noted:
                lines.append(f"ⓘ {model.answer_note}")
        self._line("\n".join(lines))
