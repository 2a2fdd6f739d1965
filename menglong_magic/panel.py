"""The live ipywidgets run panel, and ``make_view`` which picks the panel or the text view.

Updates are folded into a :class:`~menglong_magic.viewmodel.RunViewModel` and pushed to the widgets
at most every ``update_interval`` seconds (inside ``hold_sync``), then flushed once at the end. Widget
output capture breaks after an ``await`` (ipywidgets#3993), so the panel only sets traits.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Protocol

import ipywidgets as w

from . import events as ev
from .textview import TextView
from .viewmodel import RunViewModel


class RunView(Protocol):
    def handle(self, event: ev.Event) -> None: ...
    def show(self) -> None: ...
    def finish(self) -> None: ...


def make_view(
    *,
    title: str,
    widgets: bool,
    on_stop: Callable[[], None] | None = None,
    update_interval: float = 0.1,
    compact: bool = False,
) -> RunView:
    """The live panel when a widget front end is there, else the text view."""
    if widgets and not compact:
        return RunPanel(title=title, on_stop=on_stop, update_interval=update_interval)
    return TextView(title=title, compact=compact)


class PanelBox(w.VBox):
    """The panel's top widget, with a short, stable text/plain repr (what nbval and terminals see)."""

    title = ""

    def __repr__(self) -> str:
        return f"RunPanel({self.title!r})"


class RunPanel:
    """A live panel: header (status badge, elapsed, tokens), progress + Stop, iterations or batch table."""

    def __init__(self, *, title: str, on_stop: Callable[[], None] | None = None, update_interval: float = 0.1):
        self.model = RunViewModel(title)
        self.update_interval = max(update_interval, 0.0)
        self._on_stop = on_stop
        self._stop_lock = threading.Lock()
        self._stopped = False
        self.header = w.HTML(self.model.header_html())
        self.progress = w.IntProgress(value=0, min=0, max=1, description="", layout=w.Layout(width="240px"))
        self.progress_label = w.HTML("")
        self.stop_button = w.Button(description="Stop", icon="stop", button_style="danger",
                                    layout=w.Layout(width="90px"), disabled=on_stop is None)
        self.stop_button.add_class("mm-stop")
        self.stop_button.on_click(self._stop_clicked)
        self.body = w.HTML(self.model.body_html())
        self.widget = PanelBox([self.header, w.HBox([self.progress, self.progress_label, self.stop_button]),
                                 self.body])
        self.widget.title = title
        self.widget.add_class("mm-panel")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._flushed_version = -1
        self._finished = False
        self.flushes = 0

    # -------------------------------------------------------------- lifecycle
    def show(self) -> None:
        from IPython.display import display

        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        display(self.widget)

    def handle(self, event: ev.Event) -> None:
        loop = self._loop
        if loop is not None and not _on_loop(loop):
            loop.call_soon_threadsafe(self.handle, event)
            return
        self.model.apply(event)
        if self._finished:
            return
        final = (ev.RunFinished, ev.BatchFinished, ev.WorkflowFinished)
        if isinstance(event, final) and event.run_id == self.model.run_id:
            self.flush()
        elif self._timer is None:
            self._schedule()

    def finish(self) -> None:
        """Final flush, disable Stop, and write the static record (kept in saved notebooks)."""
        from IPython.display import display

        if self._finished:
            return
        self._finished = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.model.mark_cancelled()
        self.flush()
        self.stop_button.disabled = True
        # A new output rather than an update of a placeholder: nbval does not replay update_display_data.
        display({"text/plain": self.model.summary_text(), "text/html": self.model.record_html()}, raw=True)

    # -------------------------------------------------------------- rendering
    def _schedule(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            self.flush()
            return
        self._timer = loop.call_later(self.update_interval, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self.flush()
        if not self._finished and self.model.finished_at is None:
            # Keep the elapsed time moving while nothing else happens.
            self._timer = self._loop.call_later(max(self.update_interval, 1.0), self._tick) if self._loop else None

    def flush(self) -> None:
        m = self.model
        header = m.header_html()
        changed = m.version != self._flushed_version
        if not changed and header == self.header.value:
            return
        self.flushes += 1
        with self.widget.hold_sync():
            if header != self.header.value:
                self.header.value = header
            if changed:
                self._flushed_version = m.version
                if m.batch is not None:
                    total, done = len(m.batch), sum(r.status not in ("pending", "running") for r in m.batch)
                    label = f"{done} / {total} items"
                else:
                    total, done = max(m.max_iterations, 1), m.iteration_count
                    label = f"iteration {done} / {m.max_iterations}"
                if self.progress.max != total:
                    self.progress.max = total
                if self.progress.value != min(done, total):
                    self.progress.value = min(done, total)
                if self.progress_label.value != label:
                    self.progress_label.value = label
                body = m.body_html()
                if body != self.body.value:
                    self.body.value = body

    def _stop_clicked(self, _button: object = None) -> None:
        # May run on a comm/subshell thread (JupyterLab ≥ 4.4, ipykernel 7): on_stop must be thread-safe.
        with self._stop_lock:
            if self._stopped or self._on_stop is None:
                return
            self._stopped = True
        self.stop_button.description = "Stopping…"
        self.stop_button.disabled = True
        self._on_stop()


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        # Not inside a running loop: fine when this is the loop's own thread between runs.
        return threading.current_thread() is threading.main_thread()
