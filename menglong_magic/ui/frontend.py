"""Which view a run gets: the live widget panel, or the text view for front ends that cannot show widgets.

A kernel does not know what is connected to it, so :func:`widget_frontend` decides from what the front end that
sent the current cell has shown about itself. Widgets are used when any of these holds:

1. **It spoke the widget protocol on this connection.** Every ipywidgets front end (the widget manager of
   JupyterLab, Notebook 7, nbclassic, VS Code) restores widget state when it connects to a kernel, and again on
   every reconnect: it opens a ``jupyter.widget.control`` comm (``request_states``) and, when the kernel has no
   such target yet, falls back to a ``comm_info_request`` for ``jupyter.widget`` (ipywidgets'
   ``@jupyter-widgets/base-manager`` ``_loadFromKernel``). :class:`FrontendWatch` wraps the kernel's handlers for
   ``comm_open``, ``comm_info_request`` and ``comm_msg`` and remembers the client session of every such message;
   a widget's own comm traffic (a click, a state sync) counts too. It is installed by ``%load_ext`` (and at the
   latest by the first run), so a front end that connected *before* the extension was loaded has usually spoken
   before anyone listened: hence the next rules.
2. **The cell came from a notebook UI.** JupyterLab and Notebook 7 (``CodeCell.execute``) and VS Code
   (``cellExecution.ts``) put the cell's id in the ``execute_request`` metadata (``cellId``; ipykernel passes it to
   ``do_execute`` as ``cell_id``). All three render ipywidgets.
3. **The client cannot answer ``input()``** (``allow_stdin`` false): a headless executor such as nbclient,
   nbconvert, papermill or nbval. They run the notebook to save it; nbclient stores the widget state in the
   notebook (``metadata.widgets``), so the saved notebook shows the panel. They never answer comms, like a
   console, so this is the only thing that tells them apart.
4. **A widget front end connected to this kernel before the watch was installed**, after ipywidgets was imported
   (ipywidgets kept its control comm, whose opener the watch never saw, so its session is unknown).
5. **Google Colab** (``google.colab`` is imported), which renders widgets with its own manager.

Otherwise (``jupyter console``, qtconsole, editors' REPLs, a raw ``jupyter_client`` that can answer ``input()``
and never showed widget support) the text view is used. Terminal IPython (no kernel) always gets the text view.
``%config AgentMagics.frontend = "widgets"`` or ``"text"`` overrides all of this.

This module may import IPython; the agent core never imports it.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any, Literal

__all__ = ["FrontendSetting", "FrontendWatch", "unwatch", "watch", "why", "widget_frontend"]

FrontendSetting = Literal["auto", "widgets", "text"]

#: Comm targets only an ipywidgets front end asks about or opens.
WIDGET_TARGETS = frozenset({"jupyter.widget", "jupyter.widget.control"})
_WATCHED = ("comm_open", "comm_info_request", "comm_msg")
_ATTR = "_menglong_frontend_watch"


class FrontendWatch:
    """Remembers which client sessions of a kernel have spoken the Jupyter widget protocol.

    Wraps the kernel's message handlers (looked up per message by ipykernel, so wrapping takes effect at once);
    each wrapper records and then calls the original unchanged. Thread-safe: with kernel subshells, comm
    messages are handled on other threads.
    """

    def __init__(self, kernel: Any):
        self.kernel = kernel
        self._sessions: set[str] = set()
        self._comm_ids: set[str] = set()  # widget comms opened by front ends while watching
        self._lock = threading.Lock()
        self._originals: dict[tuple[str, str], Callable[..., Any]] = {}

    # ------------------------------------------------------------------ evidence
    def saw_widgets(self, session: str | None) -> bool:
        """Whether the client with this session id has shown a widget manager."""
        with self._lock:
            return session is not None and session in self._sessions

    @property
    def sessions(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._sessions)

    def saw_comm(self, comm_id: str | None) -> bool:
        """Whether this watch saw the front end open the comm ``comm_id``."""
        with self._lock:
            return comm_id in self._comm_ids

    def observe(self, msg: dict[str, Any]) -> None:
        """Record ``msg`` (a shell or control message) if it shows a widget front end."""
        try:
            header = msg.get("header") or {}
            content = msg.get("content") or {}
            kind = header.get("msg_type")
            session = header.get("session")
            if not session:
                return
            if kind in ("comm_open", "comm_info_request"):
                widget = content.get("target_name") in WIDGET_TARGETS
            elif kind == "comm_msg":
                widget = self._comm_target(content.get("comm_id")) in WIDGET_TARGETS
            else:
                widget = False
            if widget:
                with self._lock:
                    self._sessions.add(session)
                    if kind == "comm_open" and content.get("comm_id"):
                        self._comm_ids.add(content["comm_id"])
        except Exception:  # never let detection break the kernel's message handling
            return

    def _comm_target(self, comm_id: Any) -> str | None:
        manager = getattr(self.kernel, "comm_manager", None)
        comm = getattr(manager, "comms", {}).get(comm_id) if manager is not None else None
        return getattr(comm, "target_name", None)

    # ------------------------------------------------------------------ handlers
    def install(self) -> None:
        for table in ("shell_handlers", "control_handlers"):
            handlers = getattr(self.kernel, table, None)
            if not isinstance(handlers, dict):
                continue
            for kind in _WATCHED:
                original = handlers.get(kind)
                if original is None or (table, kind) in self._originals:
                    continue
                self._originals[(table, kind)] = original
                handlers[kind] = self._wrap(original)

    def uninstall(self) -> None:
        for (table, kind), original in self._originals.items():
            handlers = getattr(self.kernel, table, None)
            if isinstance(handlers, dict) and getattr(handlers.get(kind), "menglong_wrapped", None) is original:
                handlers[kind] = original
        self._originals.clear()

    def _wrap(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def handler(stream: Any, ident: Any, msg: dict[str, Any]) -> Any:
            self.observe(msg)
            return original(stream, ident, msg)  # an awaitable when the original is async: ipykernel awaits it

        handler.menglong_wrapped = original  # type: ignore[attr-defined]
        return handler


def _kernel(shell: Any) -> Any:
    return getattr(shell, "kernel", None) if shell is not None else None


def watch(shell: Any) -> FrontendWatch | None:
    """Start recording widget front ends on the shell's kernel (idempotent). None outside a kernel."""
    kernel = _kernel(shell)
    if kernel is None:
        return None
    existing = getattr(kernel, _ATTR, None)
    if isinstance(existing, FrontendWatch):
        return existing
    fw = FrontendWatch(kernel)
    fw.install()
    try:
        setattr(kernel, _ATTR, fw)
    except AttributeError:
        pass  # a kernel object that takes no attributes: detection still works, without memory across calls
    return fw


def unwatch(shell: Any) -> None:
    """Remove the handlers :func:`watch` installed (``%unload_ext``)."""
    kernel = _kernel(shell)
    fw = getattr(kernel, _ATTR, None) if kernel is not None else None
    if isinstance(fw, FrontendWatch):
        fw.uninstall()
        try:
            delattr(kernel, _ATTR)
        except AttributeError:
            pass


def _current_request(kernel: Any) -> dict[str, Any]:
    try:
        parent = kernel.get_parent()
    except Exception:
        return {}
    return parent if isinstance(parent, dict) else {}


def _unattributed_control_comm(fw: FrontendWatch | None) -> bool:
    """ipywidgets kept a control comm that a front end opened before ``fw`` was watching."""
    widgets = sys.modules.get("ipywidgets")
    comm = getattr(getattr(widgets, "Widget", None), "_control_comm", None)
    if comm is None:
        return False
    return fw is None or not fw.saw_comm(getattr(comm, "comm_id", None))


def why(shell: Any, setting: str = "auto") -> tuple[bool, str]:
    """The decision of :func:`widget_frontend` and the rule (in words) that made it."""
    setting = (setting or "auto").lower()
    if setting == "widgets":
        return True, "configured: widgets"
    if setting == "text":
        return False, "configured: text"
    if setting != "auto":
        raise ValueError(f"frontend must be 'auto', 'widgets' or 'text', not {setting!r}")
    kernel = _kernel(shell)
    if kernel is None:
        return False, "no kernel (terminal IPython)"
    fw = watch(shell)
    request = _current_request(kernel)
    header = request.get("header") or {}
    if fw is not None and fw.saw_widgets(header.get("session")):
        return True, "this front end spoke the widget protocol"
    if "cellId" in (request.get("metadata") or {}):
        return True, "a notebook UI (the request carries a cellId)"
    if header.get("msg_type") == "execute_request" and (request.get("content") or {}).get("allow_stdin") is False:
        return True, "a headless notebook executor (no stdin): widget state is saved with the notebook"
    if _unattributed_control_comm(fw):
        return True, "a widget front end connected to this kernel before the extension was loaded"
    if "google.colab" in sys.modules:
        return True, "Google Colab"
    return False, "no sign of a widget front end (a console or a plain client)"


def widget_frontend(shell: Any, setting: str = "auto") -> bool:
    """True when runs should show the live widget panel, False for the text view.

    ``setting`` is ``%config AgentMagics.frontend``: ``"widgets"`` or ``"text"`` force a view, ``"auto"`` decides
    from the front end that sent the current cell (see the module docstring for the rules).
    """
    return why(shell, setting)[0]
