"""The life of a live widget view, shared by the run panel and the map panel.

``show()`` displays the widget under a ``display_id`` (raw: no text/plain repr beside the widget mime type).
Events are folded into a view model on the view's loop (events from other threads are marshalled there) and
pushed to the widget at most every ``update_interval`` seconds; while nothing happens an idle tick refreshes
elapsed times once a second, and an event never waits for that tick. ``finish()`` empties the live output,
displays the final view as a new output (nbval ignores ``update_display_data``, see panel.py) and
``close()`` releases the widget model and its Layout.

A ``--bg`` run can end after the cell that showed it: its messages still carry that cell's request as parent
(the task kept the context it was created in). JupyterLab routes them to that cell, but a headless executor
(nbclient, papermill) only reads messages of the cell it is running now, so the saved notebook would keep the
live panel in its last state ("running") forever. nbclient applies an ``update_display_data`` of the running
cell to every output with that display id, in any cell. So when the showing cell has ended, the final view
replaces the live output in place, sent twice: under the showing cell (front ends) and under the request
running now (headless executors). :func:`track_requests` notes which request that is.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
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
        self._shown_by: dict[str, Any] | None = None  # the request (cell) that showed it, in a kernel
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
                self._shown_by = _display_parent()

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
            now = _current_request()
            if _msg_id(self._shown_by) and _msg_id(now) and _msg_id(now) != _msg_id(self._shown_by):
                # The showing cell has ended (see the module's docstring): replace in place, under both parents.
                self._handle.update(self.final_bundle, raw=True)
                with _parent(now):
                    self._handle.update(self.final_bundle, raw=True)
            else:
                self._handle.update({}, raw=True)  # the live output vanishes
                display(self.final_bundle, raw=True)
        self.close()

    def close(self) -> None:
        """Release the widget model and its Layout (idempotent)."""
        self._cancel_timer()
        self.before_close()
        widget, self.widget = self.widget, None
        if widget is not None:
            # Read without creating it (``widget.layout`` would make a default Layout just to close it).
            layout = widget._trait_values.get("layout")  # noqa: SLF001
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


# ---------------------------------------------------------------------- which request is running
_latest_request: dict[str, Any] = {}


def track_requests(shell: Any) -> None:
    """Note the kernel's request for every cell from now on (installed by ``%load_ext``; idempotent)."""
    if _note_request not in shell.events.callbacks["pre_run_cell"]:
        shell.events.register("pre_run_cell", _note_request)


def untrack_requests(shell: Any) -> None:
    if _note_request in shell.events.callbacks["pre_run_cell"]:
        shell.events.unregister("pre_run_cell", _note_request)


def _note_request(_info: Any = None) -> None:
    # Runs in the context of the cell's execute_request, so the kernel's (context-local) parent is that request.
    from IPython import get_ipython

    kernel = getattr(get_ipython(), "kernel", None)
    get_parent = getattr(kernel, "get_parent", None)
    parent = get_parent("shell") if callable(get_parent) else None
    _latest_request.clear()
    if isinstance(parent, dict):
        _latest_request.update(parent)


def _current_request() -> dict[str, Any] | None:
    return dict(_latest_request) or None


def _display_parent() -> dict[str, Any] | None:
    """The parent header this context's display messages carry (a kernel's display publisher), else None."""
    from IPython import get_ipython

    header = getattr(getattr(get_ipython(), "display_pub", None), "parent_header", None)
    return {"header": header} if isinstance(header, dict) else None


@contextmanager
def _parent(request: dict[str, Any] | None) -> Iterator[None]:
    """Send this context's display messages as replies to ``request`` (ipykernel's display publisher)."""
    from IPython import get_ipython

    publisher = getattr(get_ipython(), "display_pub", None)
    set_parent = getattr(publisher, "set_thread_parent", None)
    reset_parent = getattr(publisher, "reset_thread_parent", None)
    if request is None or not callable(set_parent) or not callable(reset_parent):
        yield
        return
    token = set_parent(request)
    try:
        yield
    finally:
        reset_parent(token)


def _msg_id(message: dict[str, Any] | None) -> str:
    header = message.get("header") if isinstance(message, dict) else None
    return str(header.get("msg_id") or "") if isinstance(header, dict) else ""


def on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        # Not inside a running loop: fine when this is the loop's own thread between runs.
        return threading.current_thread() is threading.main_thread()
