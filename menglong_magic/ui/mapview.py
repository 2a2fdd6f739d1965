"""The view of a map (or a big batch): aggregates only, so it stays cheap at any size.

:class:`MapViewModel` folds the map's events into counters (done, failed, running, restored from the
journal), the rate, the ETA, tokens and cost so far, the last few rows and the list of failures. Each
event costs O(1); rendering the live view costs O(last rows), whatever the number of items. Failures
reach the live widget as append-only messages (only the new ones per update); the final view lists
them all, once.

Views: :class:`MapPanel` (one ``anywidget`` model, throttled ``hold_sync`` updates, a final static
display, the widget closed at the end, like :class:`~menglong_magic.ui.panel.RunPanel`) and
:class:`MapTextView` (a progress line at most every few seconds, each failure, a summary) for terminals.
"""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from html import escape
from pathlib import Path
from typing import Any, TextIO

from .. import events as ev
from ..maps.run import MapItemsRestored
from ..markup import NO_TYPESET, SHORT_CELL_STYLE, TABLE_STYLE, WIDE_CELL_STYLE, clip, terminal_safe
from ..usage import format_cost
from .html import HEADER_STYLE, status_badge
from .live import LiveWidgetView
from .state import STATUS_COLORS

LAST_ROWS = 5
MAX_ROW_TEXT = 160
MAX_FAILURE_TEXT = 300


#: The badge colours of a map's states, from the run view's palette (amber with errors, as a run that hit a limit).
MAP_STATUS_COLORS = {"running": STATUS_COLORS["running"], "completed": STATUS_COLORS["completed"],
                     "completed with errors": STATUS_COLORS["max_iterations"], "cancelled": STATUS_COLORS["cancelled"]}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class MapViewModel:
    """Counters and a bounded window of rows, built only from events (no IPython import)."""

    def __init__(self, title: str = "map", last_rows: int = LAST_ROWS):
        self.title = title
        self.run_id: str | None = None
        self.total = 0
        self.done = 0  # answered in this call
        self.failed = 0
        self.restored = 0  # answered from the journal (or repeats of another item)
        self.running: set[int] = set()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.input_tokens = 0
        self.output_tokens = 0
        self.requests = 0
        self.unreported = 0
        self._cost = 0.0
        self._cost_known = True
        self.retries = 0
        self.rows: deque[tuple[int, str, str]] = deque(maxlen=last_rows)  # (index, status, text)
        self.failures: list[tuple[int, str]] = []
        self.version = 0
        self.cancelled = False

    # ------------------------------------------------------------------ events
    def apply(self, event: ev.Event) -> None:
        if isinstance(event, ev.BatchStarted):
            if self.run_id is None:
                self.run_id = event.run_id
                self.total = len(event.messages)
                self.started_at = time.perf_counter()
                self.version += 1
            return
        if isinstance(event, ev.ModelResponseReceived):
            self.requests += 1
            usage = event.usage
            if usage is None or usage.total_tokens is None:
                self.unreported += 1
            else:
                self.input_tokens += usage.input_tokens or 0
                self.output_tokens += usage.output_tokens or 0
            cost = getattr(event, "cost", None)
            if cost is None:
                self._cost_known = False
            else:
                self._cost += cost
            self.version += 1
            return
        if isinstance(event, ev.Retry):
            self.retries += 1
            self.version += 1
            return
        if event.run_id != self.run_id:
            return
        self.version += 1
        if isinstance(event, ev.BatchItemStarted):
            self.running.add(event.index)
        elif isinstance(event, ev.BatchItemFinished):
            self.running.discard(event.index)
            if event.status == "ok":
                self.done += 1
                self.rows.append((event.index, "ok", clip(event.result or "", MAX_ROW_TEXT)))
            else:
                self.failed += 1
                text = clip(event.error or event.status, MAX_FAILURE_TEXT)
                self.failures.append((event.index, text))
                self.rows.append((event.index, event.status, text))
        elif isinstance(event, ev.BatchFinished):
            self.finished_at = time.perf_counter()
        elif isinstance(event, MapItemsRestored):
            self.restored += event.count

    def mark_cancelled(self) -> None:
        if self.finished_at is None:
            self.finished_at = time.perf_counter()
            self.cancelled = True
            self.version += 1

    # ------------------------------------------------------------------ figures
    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    @property
    def completed(self) -> int:
        """Items with an outcome (answered now, restored, or failed)."""
        return self.done + self.failed + self.restored

    def elapsed(self) -> float:
        if self.started_at is None:
            return 0.0
        return (self.finished_at or time.perf_counter()) - self.started_at

    def rate(self) -> float | None:
        """Items per second requested by this call (journal hits excluded)."""
        elapsed = self.elapsed()
        finished = self.done + self.failed
        return finished / elapsed if elapsed > 0 and finished else None

    def eta(self) -> float | None:
        """Seconds left at the rate so far; None until 5% of the requested items have finished (at least two): the
        first answers all come after one round trip, before the map is up to speed ("1m15s" at 2 of 500)."""
        if self.finished:
            return 0.0
        requested = self.total - self.restored
        if self.done + self.failed < min(requested, max(2, math.ceil(requested * 0.05))):
            return None
        rate = self.rate()
        remaining = self.total - self.completed
        return remaining / rate if rate else None

    @property
    def cost(self) -> float | None:
        """US dollars so far, None unless every request's price was known."""
        return self._cost if self._cost_known and self.requests else None

    @property
    def status(self) -> str:
        if not self.finished:
            return "running"
        if self.cancelled:
            return "cancelled"
        return "completed" if not self.failed else "completed with errors"

    def summary_line(self, *, titled: bool = True, stated: bool = True) -> str:
        """The figures in one line, "[title] status: " first (text lines). A panel shows its title above
        (``titled=False``); the final view's badge says the status (``stated=False``)."""
        lead = (f"[{self.title}] " if titled else "") + (f"{self.status}: " if stated else "")
        parts = [f"{lead}{self.completed}/{self.total}",
                 f"{self.done + self.restored} ok", f"{self.failed} failed"]
        if self.restored:
            parts.append(f"{self.restored} of them from the journal")
        if not self.finished:
            parts.append(f"{len(self.running)} running")
        rate = self.rate()
        if rate:
            parts.append(f"{rate:.1f} items/s")
        if not self.finished:
            parts.append(f"ETA {_duration(self.eta())}")
        parts.append(f"{_duration(self.elapsed())}")
        parts.append(self.tokens_text())
        return ", ".join(parts)

    def tokens_text(self) -> str:
        if not self.requests:
            return "no requests"
        if self.input_tokens == self.output_tokens == 0 and self.unreported:
            text = "usage not reported by this model"
        else:
            text = f"{self.input_tokens + self.output_tokens} tokens"
            if self.unreported:
                text += f" (usage of {self.unreported} requests not reported by this model)"
        cost = self.cost
        if cost is not None:
            text += f", {format_cost(cost)}"
        return text

    # ------------------------------------------------------------------ HTML (everything escaped)
    def progress(self) -> dict[str, Any]:
        return {"done": self.completed, "total": self.total, "failed": self.failed, "status": self.status}

    def stats_html(self, *, stated: bool = True) -> str:
        return f'<div class="mm-map-stats">{escape(self.summary_line(titled=False, stated=stated))}</div>'

    def header_html(self) -> str:
        """The final view's title and status badge, as the run view's final header shows them."""
        badge = status_badge(self.status, self.status, MAP_STATUS_COLORS[self.status])
        return f'<div class="mm-header" style="{HEADER_STYLE}"><b>{escape(self.title)}</b>{badge}</div>'

    def rows_html(self) -> str:
        if not self.rows:
            return ""
        cell = f'<td style="{SHORT_CELL_STYLE}">'
        lines = "".join(
            f'<tr class="mm-map-{escape(status)}">{cell}#{index}</td>{cell}{escape(status)}</td>'
            f'<td style="{WIDE_CELL_STYLE}">{escape(text)}</td></tr>'
            for index, status, text in sorted(self.rows, key=lambda row: row[0]))  # input order, not completion
        return f'<table class="mm-map-rows" style="{TABLE_STYLE}">{lines}</table>'

    @staticmethod
    def failure_html(index: int, text: str) -> str:
        return f'<div class="mm-map-failure">#{index}: {escape(text)}</div>'

    def final_html(self) -> str:
        failures = "".join(self.failure_html(i, t) for i, t in sorted(self.failures))
        block = f'<details open><summary>{len(self.failures)} failed</summary>{failures}</details>' if failures else ""
        return (f'<div class="mm-panel mm-map {NO_TYPESET}">{self.header_html()}{self.stats_html(stated=False)}'
                f"{self.rows_html()}{block}</div>")

    def summary_text(self) -> str:
        lines = [self.summary_line()]
        lines.extend(f"  #{i} failed: {t}" for i, t in sorted(self.failures))
        return "\n".join(lines)


class MapTextView:
    """For terminals and ``-q``: a progress line at most every ``interval`` seconds, each failure, a summary."""

    def __init__(self, title: str = "map", *, interval: float = 2.0, compact: bool = False,
                 stream: TextIO | None = None):
        self.model = MapViewModel(title)
        self.interval = interval
        self.compact = compact
        self._stream = stream
        self._last = 0.0
        self._finished = False

    @property
    def out(self) -> TextIO:
        return self._stream or sys.stdout

    def show(self) -> None:
        pass

    def handle(self, event: ev.Event) -> None:
        failures = len(self.model.failures)
        self.model.apply(event)
        if self.compact:
            return
        for index, text in self.model.failures[failures:]:
            self.out.write(terminal_safe(f"[{self.model.title}] item {index} failed: {text}") + "\n")
        now = time.monotonic()
        if isinstance(event, ev.BatchItemFinished) and now - self._last >= self.interval:
            self._last = now
            self.out.write(terminal_safe(self.model.summary_line()) + "\n")
            self.out.flush()

    def finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self.model.mark_cancelled()
        self.out.write(terminal_safe(self.model.summary_text() if self.compact else self.model.summary_line()) + "\n")
        self.out.flush()

    def close(self) -> None:
        pass


def _map_widget_class() -> Any:
    import anywidget
    import traitlets

    static = Path(__file__).parent / "static"

    class MapWidget(anywidget.AnyWidget):  # type: ignore[misc]
        """One widget model per map: stats, progress, last rows; failures arrive as appended messages."""

        _esm = (static / "mappanel.js").read_text(encoding="utf-8")  # text, not Path: manzt/anywidget#929
        _css = (static / "panel.css").read_text(encoding="utf-8")
        title = traitlets.Unicode("").tag(sync=True)
        stats = traitlets.Unicode("").tag(sync=True)
        rows = traitlets.Unicode("").tag(sync=True)
        progress = traitlets.Dict().tag(sync=True)
        stop = traitlets.Unicode("disabled").tag(sync=True)

        def _repr_mimebundle_(self, **kwargs: Any) -> Any:
            bundle = super()._repr_mimebundle_(**kwargs)
            if bundle is None:
                return None
            data, metadata = bundle
            return {k: v for k, v in data.items() if k != "text/plain"}, metadata

    return MapWidget


class MapPanel(LiveWidgetView):
    """The live map panel: throttled trait updates; ``finish()`` leaves one static output; ``close()``."""

    def __init__(self, *, title: str, on_stop: Any = None, update_interval: float = 0.2):
        super().__init__(update_interval)
        self.model = MapViewModel(title)
        self._on_stop = on_stop
        widget_type = _map_widget_class()
        self.widget: Any = widget_type(title=title, stats=self.model.stats_html(), progress=self.model.progress(),
                                       stop="enabled" if on_stop is not None else "disabled")
        self.widget.on_msg(self._on_msg)
        self._sent_failures = 0

    def is_final(self, event: ev.Event) -> bool:
        return isinstance(event, ev.BatchFinished)

    def final_bundle_now(self) -> dict[str, str]:
        return {"text/plain": terminal_safe(self.model.summary_text()), "text/html": self.model.final_html()}

    def flush(self) -> None:
        """Push the aggregates (O(last rows)) and the failures not sent yet."""
        w = self.widget
        if w is None:
            return
        m = self.model
        stats = m.stats_html()
        if m.version == self._flushed_version and stats == w.stats:
            return
        self.flushes += 1
        self._flushed_version = m.version
        with w.hold_sync():
            w.stats = stats
            progress = m.progress()
            if progress != w.progress:
                w.progress = progress
            rows = m.rows_html()
            if rows != w.rows:
                w.rows = rows
            if m.finished and w.stop != "hidden":
                w.stop = "hidden"
        new = m.failures[self._sent_failures:]
        if new:
            self._sent_failures = len(m.failures)
            w.send({"type": "failures", "html": [m.failure_html(i, t) for i, t in new]})

    def _on_msg(self, _widget: Any, content: Any, _buffers: Any = None) -> None:
        if isinstance(content, dict) and content.get("type") == "stop" and self._on_stop is not None:
            stop, self._on_stop = self._on_stop, None  # thread-safe enough: the callback itself must be
            stop()


def make_map_view(*, title: str, widgets: bool, on_stop: Any = None, update_interval: float = 0.2,
                  compact: bool = False) -> MapPanel | MapTextView:
    """The live map panel where widgets render, else the text view."""
    if widgets and not compact:
        return MapPanel(title=title, on_stop=on_stop, update_interval=update_interval)
    return MapTextView(title=title, compact=compact)
