"""The life of a live widget view, shared by the run panel and the map panel.

``show()`` displays the widget under a ``display_id`` (raw: no text/plain repr beside the widget mime type).
Events are folded into a view model on the view's loop (events from other threads are marshalled there) and
pushed to the widget at most every ``update_interval`` seconds; while nothing happens an idle tick refreshes
elapsed times once a second, and an event never waits for that tick. ``finish()`` empties the live output,
displays the final view as a new output (nbval ignores ``update_display_data``, see panel.py) and
``close()`` releases the widget model and its Layout.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from .. import events as ev


class LiveWidgetView:
    """Subclasses set ``self.model`` and ``self.widget`` and implement ``flush()``, ``final_bundle_now()``
    and ``is_final(event)``; ``before_finish()`` / ``before_close()`` are optional hooks."""

    model: Any
    widget: Any

    def __init__(self, update_interval: float) -> None:
        self.update_interval = max(update_interval, 0.0)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._idle_tick = False  # the pending timer only refreshes elapsed times
        self._handle: Any = None  # the DisplayHandle of the live output
        self._flushed_version = -1
        self._finished = False
        self.flushes = 0
        self.final_bundle: dict[str, str] | None = None

    # ------------------------------------------------------------------ hooks
    def flush(self) -> None:
        raise NotImplementedError

    def final_bundle_now(self) -> dict[str, str]:
        raise NotImplementedError

    def is_final(self, event: ev.Event) -> bool:
        raise NotImplementedError

    def before_finish(self) -> None:
        pass

    def before_close(self) -> None:
        pass

    # ------------------------------------------------------------------ lifecycle
    def show(self) -> None:
        from IPython.display import display

        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        if self.widget is not None and self._handle is None:
            bundle = self.widget._repr_mimebundle_()
            if bundle is not None:
                data, metadata = bundle
                self._handle = display(data, metadata=metadata, raw=True, display_id=True)

    def handle(self, event: ev.Event) -> None:
        """Fold an event in; schedule a throttled flush. Thread-safe (marshalled to the view's loop)."""
        loop = self._loop
        if loop is not None and not on_loop(loop):
            if not loop.is_closed():
                loop.call_soon_threadsafe(self.handle, event)
            return
        self.model.apply(event)
        if self._finished:
            return
        if self.is_final(event):
            self.flush()
        else:
            self.request_flush()

    def request_flush(self) -> None:
        """Flush within ``update_interval`` (not at the next idle tick). Thread-safe."""
        loop = self._loop
        if loop is not None and not on_loop(loop):
            if not loop.is_closed():
                loop.call_soon_threadsafe(self.request_flush)
            return
        if self._finished:
            return
        if self._timer is None or self._idle_tick:
            self._cancel_timer()
            self._schedule()

    def finish(self) -> None:
        """The final form: one static output; the widget released."""
        from IPython.display import display

        if self._finished:
            return
        self._finished = True
        self._cancel_timer()
        self.before_finish()
        self.model.mark_cancelled()
        self.flush()  # a front end that keeps the widget (a second view of it) shows the final state
        self.final_bundle = self.final_bundle_now()
        if self._handle is not None:
            self._handle.update({}, raw=True)  # the live output vanishes
            display(self.final_bundle, raw=True)
        self.close()

    def close(self) -> None:
        """Release the widget model and its Layout (idempotent)."""
        self._cancel_timer()
        self.before_close()
        widget, self.widget = self.widget, None
        if widget is not None:
            layout = widget._trait_values.get("layout")
            widget.close()
            if layout is not None:
                layout.close()

    # ------------------------------------------------------------------ throttling
    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            self.flush()
            return
        self._timer = loop.call_later(self.update_interval, self._tick)
        self._idle_tick = False

    def _tick(self) -> None:
        self._timer = None
        self.flush()
        if not self._finished and not self.model.finished and self._loop is not None:
            # Keep elapsed times moving while nothing else happens.
            self._timer = self._loop.call_later(max(self.update_interval, 1.0), self._tick)
            self._idle_tick = True


def on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        # Not inside a running loop: fine when this is the loop's own thread between runs.
        return threading.current_thread() is threading.main_thread()
