"""The live run panel (one anywidget per run), its final view, and ``make_view``.

Life of a view
--------------
``show()`` displays one widget (an ``anywidget`` with the ES module ``static/panel.js``) under a
``display_id``. Events are folded into a :class:`~menglong_magic.ui.state.RunViewModel` and pushed to
the widget's traits at most every ``update_interval`` seconds (inside ``hold_sync``), then flushed once
at the end. ``finish()`` turns the run into its final form and releases the widget:

1. the live output is updated in place to an empty bundle (``update_display_data`` with ``{}``): it
   vanishes in JupyterLab, Notebook 7 and VS Code, and nbclient saves it as an empty output;
2. the final view is a *new* ``display_data`` (text/html + a short text/plain summary): the answer,
   once, rendered as Markdown;
3. the widget model (and its ``Layout``) is closed, so ``ipywidgets.Widget.widgets`` does not grow.

Why not update the live output to the final view in place? nbval ignores ``update_display_data`` (and
``clear_output``): it would compare the widget's initial output with the saved final one and fail. The
widget's own output carries no text/plain (only the widget mime type, which nbval skips), so nbval sees
exactly the final view, and so do nbclient's saved notebooks and JupyterLab.

Widget output capture breaks after an ``await`` (ipywidgets#3993), so the panel only sets traits.

Approval
--------
:meth:`RunPanel.request_approval` is the run's approver when the magics find nobody else to ask: the call's
card shows its arguments, Approve / Deny and an optional reason (``static/panel.js`` builds those controls
once per pending call and keeps them across re-renders, so a half-typed reason survives other updates). The
click comes back as an anywidget custom message, ``{"type": "approval", "call_id", "approved", "reason"}``,
which JupyterLab >= 4.4 with ipykernel >= 7 may deliver on a kernel subshell thread while the cell runs:
the handler only takes a lock and resolves the waiting future with ``call_soon_threadsafe``. The ``approvals``
trait lists the calls the panel is asking about; when a call leaves it (decided, cancelled, timed out) its
controls disappear. If the front end holds the click until the cell ends, the controls say so after a few
seconds (``static/panel.js``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import anywidget
import traitlets

from .. import events as ev
from ..agent.approval import ApprovalDecision, ApprovalRequest
from ..markup import clip, terminal_safe
from .html import body_blocks, final_html, header_html
from .live import LiveWidgetView, on_loop
from .state import RunViewModel
from .textview import TextView

_STATIC = Path(__file__).parent / "static"
_FINAL_EVENTS = (ev.RunFinished, ev.BatchFinished, ev.WorkflowFinished)


class RunView(Protocol):
    def show(self) -> None: ...
    def handle(self, event: ev.Event) -> None: ...
    def finish(self) -> None: ...
    def close(self) -> None: ...


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


class PanelWidget(anywidget.AnyWidget):
    """The one widget model of a run. The kernel renders all HTML (escaped); the front end places it."""

    # Text, not Path: anywidget hooks every instance with a Path onto a class-level file watcher, which keeps
    # each one alive for good (manzt/anywidget#929).
    _esm = (_STATIC / "panel.js").read_text(encoding="utf-8")
    _css = (_STATIC / "panel.css").read_text(encoding="utf-8")
    title = traitlets.Unicode("").tag(sync=True)
    header = traitlets.Unicode("").tag(sync=True)
    progress = traitlets.Dict().tag(sync=True)  # {"done", "total", "label", "status"}
    blocks = traitlets.List().tag(sync=True)  # [[key, html], ...]: the view replaces changed blocks only
    stop = traitlets.Unicode("disabled").tag(sync=True)  # "enabled" | "stopping" | "disabled" | "hidden"
    # [[call_id, "tool(arguments)"], ...]: the calls the panel asks about (their Approve / Deny controls)
    approvals = traitlets.List().tag(sync=True)

    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]] | None:
        # The widget mime type only: no text/plain for nbval to compare or for a viewer to show as a stray repr.
        bundle = super()._repr_mimebundle_(**kwargs)
        if bundle is None:
            return None
        data, metadata = bundle
        data = {k: v for k, v in data.items() if k != "text/plain"}
        return data, metadata

    def __repr__(self) -> str:
        return f"RunPanel({self.title!r})"


class RunPanel(LiveWidgetView):
    """A live panel: header (status, elapsed, tokens), progress + Stop, iterations or batch table."""

    def __init__(self, *, title: str, on_stop: Callable[[], None] | None = None, update_interval: float = 0.1):
        super().__init__(update_interval)
        self.model = RunViewModel(title)
        self._on_stop = on_stop
        self._stop_lock = threading.Lock()
        self._stopped = False
        # call_id -> (loop, future) of each call waiting for a click; guarded by _approval_lock (clicks may come
        # from a subshell thread).
        self._approval_lock = threading.Lock()
        self._pending: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Future[ApprovalDecision], str]] = {}
        self.widget: PanelWidget | None = PanelWidget(
            title=title, header=header_html(self.model), blocks=[list(b) for b in body_blocks(self.model)],
            progress=self._progress_state(), stop="enabled" if on_stop is not None else "disabled")
        self.widget.on_msg(self._on_msg)

    # -------------------------------------------------------------- LiveWidgetView hooks
    def is_final(self, event: ev.Event) -> bool:
        return isinstance(event, _FINAL_EVENTS) and event.run_id == self.model.run_id

    def final_bundle_now(self) -> dict[str, str]:
        # text/plain is what terminals (jupyter console) print: control characters shown, not interpreted.
        return {"text/plain": terminal_safe(self.model.summary_text()), "text/html": final_html(self.model)}

    def before_finish(self) -> None:
        self._deny_pending("the panel was closed before anyone answered")

    before_close = before_finish

    def _progress_state(self) -> dict[str, Any]:
        done, total, label = self.model.progress()
        return {"done": done, "total": total, "label": label, "status": self.model.status}

    def flush(self) -> None:
        w = self.widget
        if w is None:
            return
        m = self.model
        header = header_html(m)
        # While the model is deciding, the iteration's "waiting for the model · Ns" moves with the idle tick.
        waiting = not m.finished and bool(m.iterations) and m.iterations[-1].model_since is not None
        changed = m.version != self._flushed_version or waiting
        approvals = self._pending_ids()
        if not changed and header == w.header and approvals == w.approvals:
            return
        self.flushes += 1
        with w.hold_sync():
            if header != w.header:
                w.header = header
            if changed:
                self._flushed_version = m.version
                progress = self._progress_state()
                if progress != w.progress:
                    w.progress = progress
                blocks = [list(b) for b in body_blocks(m)]
                if blocks != w.blocks:
                    w.blocks = blocks
                if m.finished and w.stop != "hidden":
                    w.stop = "hidden"
            if approvals != w.approvals:
                w.approvals = approvals

    # -------------------------------------------------------------- Approval
    async def request_approval(self, request: ApprovalRequest) -> ApprovalDecision:
        """Ask on the call's card (Approve / Deny + reason) and wait for the click: the run's approver.

        Several calls may wait at once, each decided on its own. Cancelling the waiting task (Stop, an
        interrupt, the approval timeout) removes the controls. After ``finish()`` nothing is asked: denied.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ApprovalDecision] = loop.create_future()
        with self._approval_lock:
            if self._finished or self.widget is None:
                return ApprovalDecision(False, "the panel was closed before anyone answered", "panel")
            if request.call_id in self._pending:
                raise RuntimeError(f"tool call {request.call_id!r} is already awaiting approval")
            self._pending[request.call_id] = (loop, future, _call_label(request))
        self.request_flush()
        try:
            return await future
        finally:
            with self._approval_lock:
                entry = self._pending.get(request.call_id)
                if entry is not None and entry[1] is future:
                    del self._pending[request.call_id]
            self.request_flush()

    def approval_clicked(self, call_id: Any, approved: Any, reason: Any = None) -> bool:
        """A click on a card's Approve / Deny. Thread-safe (it may run on a comm/subshell thread).

        Returns whether it decided a waiting call; an unknown or already decided ``call_id`` is ignored.
        """
        if not isinstance(call_id, str) or not isinstance(approved, bool):
            return False
        with self._approval_lock:
            entry = self._pending.pop(call_id, None)
        if entry is None:
            return False
        text = reason.strip()[:1000] if isinstance(reason, str) else ""
        decision = ApprovalDecision(approved, None if approved or not text else text, "panel")
        loop, future, _label = entry
        _resolve_threadsafe(loop, future, decision)
        return True

    def _pending_ids(self) -> list[list[str]]:
        with self._approval_lock:
            return [[call_id, label] for call_id, (_loop, _future, label) in self._pending.items()]

    def _deny_pending(self, reason: str) -> None:
        with self._approval_lock:
            entries, self._pending = list(self._pending.values()), {}
        for loop, future, _label in entries:
            _resolve_threadsafe(loop, future, ApprovalDecision(False, reason, "panel"))

    # -------------------------------------------------------------- Stop
    def _on_msg(self, _widget: Any, content: Any, _buffers: Any = None) -> None:
        if not isinstance(content, dict):
            return
        if content.get("type") == "stop":
            self.stop_clicked()
        elif content.get("type") == "approval":
            self.approval_clicked(content.get("call_id"), content.get("approved"), content.get("reason"))

    def stop_clicked(self) -> None:
        """The Stop control. May run on a comm/subshell thread (JupyterLab ≥ 4.4, ipykernel 7): thread-safe."""
        with self._stop_lock:
            if self._stopped or self._on_stop is None or self._finished:
                return
            self._stopped = True
        self._set_stop_state("stopping")
        self._on_stop()

    def _set_stop_state(self, state: str) -> None:
        loop = self._loop
        if loop is not None and not on_loop(loop) and not loop.is_closed():
            loop.call_soon_threadsafe(self._set_stop_state, state)
            return
        w = self.widget
        if w is not None and w.stop not in ("hidden", state):
            w.stop = state


def _call_label(request: ApprovalRequest) -> str:
    """``send_email(to='ann')``: names the call where its card is not shown (the panel lists it below)."""
    args = request.arguments
    text = args if isinstance(args, str) else ", ".join(f"{k}={v!r}" for k, v in (args or {}).items())
    return f"{request.tool_name}({clip(text, 200)})"


def _resolve_threadsafe(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], value: Any) -> None:
    def resolve() -> None:
        if not future.done():
            future.set_result(value)

    try:
        here = asyncio.get_running_loop() is loop
    except RuntimeError:
        here = False
    if here:
        resolve()
    elif not loop.is_closed():
        loop.call_soon_threadsafe(resolve)
