"""A compact text view of a run, for terminals and ``-q``. Renders the same events as the panel."""

from __future__ import annotations

import sys
from typing import TextIO

from . import events as ev
from .viewmodel import RunViewModel, clip


class TextView:
    """Prints one line per step (iteration, tool call, batch item) and a closing summary.

    ``compact=True`` prints only the closing summary.
    """

    def __init__(self, title: str = "agent", compact: bool = False, stream: TextIO | None = None) -> None:
        self.model = RunViewModel(title)
        self.compact = compact
        self._stream = stream
        self._in_text = False
        self._finished = False

    @property
    def out(self) -> TextIO:
        return self._stream or sys.stdout

    def _line(self, text: str) -> None:
        if self._in_text:
            self.out.write("\n")
            self._in_text = False
        self.out.write(text + "\n")
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
        if not mine:
            return
        if isinstance(event, ev.IterationStarted):
            self._line(f"[{title}] iteration {event.iteration}/{event.max_iterations}")
        elif isinstance(event, ev.TextDelta):
            if not self._in_text:
                self.out.write("  ")
                self._in_text = True
            self.out.write(event.delta.replace("\n", "\n  "))
            self.out.flush()
        elif isinstance(event, ev.ToolCallStarted):
            args = event.arguments if isinstance(event.arguments, str) else ", ".join(
                f"{k}={v!r}" for k, v in (event.arguments or {}).items())
            self._line(f"  → {event.name}({clip(args, 200)})")
        elif isinstance(event, ev.ToolCallFinished):
            mark, body = ("✓", event.result) if event.ok else ("✗", event.error)
            self._line(f"  {mark} {event.name} {event.duration:.2f}s: {clip(body or '', 200)}")
        elif isinstance(event, ev.Retry):
            self._line(f"  ↻ retry {event.attempt} in {event.delay:.1f}s: {event.error}")

    def finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self.model.finished_at is None:
            self.model.mark_cancelled()
        # The summary line only: the answer itself is the cell's value (the RunResult's repr).
        self._line(self.model.summary_text().split("\n", 1)[0])
