"""The rules of menglong_magic.ui.frontend on a stand-in kernel (the real kernel: tests/kernel/test_frontend.py)."""

from __future__ import annotations

import asyncio
import sys
from types import SimpleNamespace
from typing import Any

import pytest

from menglong_magic.ui import frontend
from menglong_magic.ui.frontend import FrontendWatch, unwatch, watch, why, widget_frontend


class StandInKernel:
    """The parts of an ipykernel Kernel the detection uses: handler tables, get_parent, comm_manager."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.shell_handlers: dict[str, Any] = {k: self._handler(k) for k in ("comm_open", "comm_msg",
                                                                              "comm_info_request", "execute_request")}
        self.control_handlers: dict[str, Any] = {"comm_info_request": self._async_handler("control_comm_info")}
        self.parent: dict[str, Any] = {}
        self.comm_manager = SimpleNamespace(comms={})

    def _handler(self, name: str) -> Any:
        def handle(stream: Any, ident: Any, msg: dict[str, Any]) -> str:
            self.calls.append(name)
            return f"{name} handled"
        return handle

    def _async_handler(self, name: str) -> Any:
        async def handle(stream: Any, ident: Any, msg: dict[str, Any]) -> str:
            self.calls.append(name)
            return f"{name} handled"
        return handle

    def get_parent(self, channel: str | None = None) -> dict[str, Any]:
        return self.parent

    def deliver(self, kind: str, session: str, content: dict[str, Any], table: str = "shell_handlers") -> Any:
        msg = {"header": {"msg_type": kind, "session": session}, "content": content, "metadata": {}}
        return getattr(self, table)[kind](None, [], msg)

    def execute(self, session: str, *, allow_stdin: bool = True, metadata: dict[str, Any] | None = None) -> None:
        self.parent = {"header": {"msg_type": "execute_request", "session": session},
                       "content": {"code": "%agent_run x", "allow_stdin": allow_stdin}, "metadata": metadata or {}}


@pytest.fixture
def shell() -> Any:
    return SimpleNamespace(kernel=StandInKernel())


@pytest.fixture(autouse=True)
def _no_colab_or_control_comm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setattr(frontend, "_unattributed_control_comm", lambda fw: False)


def test_settings_override_and_terminal_ipython(shell: Any) -> None:
    shell.kernel.execute("console")
    assert widget_frontend(shell, "widgets") is True
    assert widget_frontend(shell, "text") is False
    assert widget_frontend(shell, "auto") is False
    assert widget_frontend(SimpleNamespace(), "auto") is False  # no kernel: terminal IPython
    assert why(SimpleNamespace())[1] == "no kernel (terminal IPython)"
    with pytest.raises(ValueError, match="auto"):
        widget_frontend(shell, "panel")


def test_widget_protocol_marks_only_the_session_that_spoke_it(shell: Any) -> None:
    kernel = shell.kernel
    watch(shell)
    kernel.execute("lab")
    assert not widget_frontend(shell)
    assert kernel.deliver("comm_open", "lab", {"comm_id": "c1", "target_name": "jupyter.widget.control"}) \
        == "comm_open handled"  # the original handler still runs, its result passed on
    assert widget_frontend(shell)
    kernel.execute("console")
    assert not widget_frontend(shell)
    kernel.deliver("comm_open", "console", {"comm_id": "c2", "target_name": "some.other.target"})
    assert not widget_frontend(shell)


def test_comm_info_request_on_either_channel_and_widget_comm_messages(shell: Any) -> None:
    kernel = shell.kernel
    watch(shell)
    result = kernel.deliver("comm_info_request", "a", {"target_name": "jupyter.widget"}, table="control_handlers")
    assert asyncio.run(result) == "control_comm_info handled"  # an async original stays awaitable
    kernel.execute("a")
    assert widget_frontend(shell)
    kernel.deliver("comm_info_request", "b", {"target_name": None})  # all comms: not a widget manager's question
    kernel.execute("b")
    assert not widget_frontend(shell)
    kernel.comm_manager.comms["w1"] = SimpleNamespace(target_name="jupyter.widget")
    kernel.deliver("comm_msg", "b", {"comm_id": "w1", "data": {"method": "update"}})  # e.g. a Stop click
    assert widget_frontend(shell)
    assert kernel.calls == ["control_comm_info", "comm_info_request", "comm_msg"]


def test_notebook_ui_and_headless_executors(shell: Any) -> None:
    kernel = shell.kernel
    kernel.execute("lab", metadata={"cellId": "3f2a", "deletedCells": [], "recordTiming": False})
    assert why(shell) == (True, "a notebook UI (the request carries a cellId)")
    kernel.execute("nbclient", allow_stdin=False)
    assert widget_frontend(shell)
    kernel.execute("console", allow_stdin=True)
    assert not widget_frontend(shell)


def test_watch_is_idempotent_and_unwatch_restores_the_handlers(shell: Any) -> None:
    kernel = shell.kernel
    originals = dict(kernel.shell_handlers), dict(kernel.control_handlers)
    first = watch(shell)
    assert isinstance(first, FrontendWatch) and watch(shell) is first
    assert kernel.shell_handlers["comm_open"] is not originals[0]["comm_open"]
    assert kernel.shell_handlers["execute_request"] is originals[0]["execute_request"]  # only comm traffic
    unwatch(shell)
    assert (kernel.shell_handlers, kernel.control_handlers) == originals
    assert watch(SimpleNamespace()) is None


def test_a_broken_message_never_breaks_the_handler(shell: Any) -> None:
    kernel = shell.kernel
    watch(shell)
    assert kernel.shell_handlers["comm_open"](None, [], {"header": None, "content": "garbage"}) == "comm_open handled"
