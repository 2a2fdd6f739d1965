"""Keep the kernel's published status "busy" while an agent cell runs, as for any running cell.

Measured in JupyterLab 4.6 with ipykernel 7 (tests/browser/test_status_browser.py): displaying the panel makes
the front end's widget manager send a ``create_subshell_request`` on the control channel (comm messages then go
over a subshell); the kernel publishes busy → idle for it, with that request as parent, while the cell is
still running. JupyterLab's status bar follows the latest status message whatever its parent, so it said
"Idle" about a second into every agent cell. A plain ``await asyncio.sleep(6)`` cell sends no such message.

The fix here: while a blocking agent cell runs, an "idle" published for any *other* message (a control
request, a comm message on a subshell) is followed at once by "busy" with the running cell's
``execute_request`` as parent. The other request still gets its own idle (front ends wait for it to
settle that request), and the status then says what is true: the kernel is busy with the cell. The
cell's own idle at its end passes unchanged. Nothing changes outside agent cells or in ``--bg`` runs.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any

_ATTRIBUTE = "_menglong_status_guard"


class BusyWhileRunning:
    """Wraps one kernel's ``_publish_status`` (ipykernel) to re-assert "busy" for running agent cells."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        # ipykernel has no public hook for the status it publishes.
        self._original: Callable[..., Any] = kernel._publish_status  # noqa: SLF001
        self._cells: dict[int, dict[str, Any]] = {}  # token → the running cell's execute_request
        self._tokens = itertools.count()
        self._lock = threading.Lock()  # status is published from the shell, control and subshell threads

    def install(self) -> None:
        self.kernel._publish_status = self._publish  # noqa: SLF001
        setattr(self.kernel, _ATTRIBUTE, self)

    def uninstall(self) -> None:
        if self.kernel.__dict__.get("_publish_status") == self._publish:
            del self.kernel._publish_status  # noqa: SLF001 (back to the class's method)
        if getattr(self.kernel, _ATTRIBUTE, None) is self:
            delattr(self.kernel, _ATTRIBUTE)

    def _publish(self, status: str, channel: str, parent: Any = None) -> None:
        self._original(status, channel, parent)
        if status != "idle":
            return
        with self._lock:
            cells = list(self._cells.values())
        if not cells:
            return
        settled = _msg_id(parent or self.kernel.get_parent(channel))
        running = [cell for cell in cells if _msg_id(cell) != settled]
        if len(running) == len(cells):  # the idle was for another message: the cell still runs
            self._original("busy", "shell", running[-1])

    def cell_started(self) -> Callable[[], None]:
        """Note that the current shell request (an agent cell) is running; returns the function ending it."""
        parent = self.kernel.get_parent("shell")
        if not _msg_id(parent):
            return lambda: None
        token = next(self._tokens)
        with self._lock:
            self._cells[token] = parent

        def ended() -> None:
            with self._lock:
                self._cells.pop(token, None)

        return ended


def _msg_id(message: Any) -> str:
    header = message.get("header") if isinstance(message, dict) else None
    return str(header.get("msg_id") or "") if isinstance(header, dict) else ""


def install(shell: Any) -> BusyWhileRunning | None:
    """Install the guard on the shell's kernel (an ipykernel kernel), once; None outside a kernel."""
    kernel = getattr(shell, "kernel", None)
    if kernel is None or not callable(getattr(kernel, "_publish_status", None)):
        return None
    if not callable(getattr(kernel, "get_parent", None)):
        return None
    existing = getattr(kernel, _ATTRIBUTE, None)
    if isinstance(existing, BusyWhileRunning):
        return existing
    guard = BusyWhileRunning(kernel)
    guard.install()
    return guard


def uninstall(shell: Any) -> None:
    guard = getattr(getattr(shell, "kernel", None), _ATTRIBUTE, None)
    if isinstance(guard, BusyWhileRunning):
        guard.uninstall()


def cell_started(shell: Any) -> Callable[[], None]:
    """Mark the running cell as an agent cell for the guard (a no-op outside a kernel)."""
    guard = getattr(getattr(shell, "kernel", None), _ATTRIBUTE, None)
    return guard.cell_started() if isinstance(guard, BusyWhileRunning) else lambda: None


__all__ = ["BusyWhileRunning", "cell_started", "install", "uninstall"]
