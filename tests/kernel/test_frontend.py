"""The view follows the front end: a console-like client gets the text view, widget front ends get the panel.

The clients here never answer comms (like ``jupyter console``); what differs is what each one shows the kernel:
a console sends ``allow_stdin: true`` and nothing about widgets, JupyterLab/VS Code put a ``cellId`` in the
request metadata and open the widget control comm, nbclient runs without stdin and saves widget state.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_client.session import Session
from nbclient import NotebookClient

pytestmark = pytest.mark.kernel

Kernel = Execution = Any  # the kernel tier's conftest types (tests are not a package: looked up at run time)

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
SETUP = """
%load_ext menglong_magic
from menglong_magic import tool

@tool
def weather(city: str) -> str:
    \"\"\"Current weather for a city.\"\"\"
    return f"sunny in {city}"
"""
RUN = "%agent_run What's the weather in 'Paris'?"


def _send(kernel: Kernel, code: str, *, client: Any = None, allow_stdin: bool = True,
          metadata: dict[str, Any] | None = None, timeout: float = 60) -> Execution:
    """Execute ``code`` as a front end would: ``allow_stdin`` as it declares, optional request metadata."""
    client = client or kernel.client
    content = {"code": code, "silent": False, "store_history": True, "user_expressions": {},
               "allow_stdin": allow_stdin, "stop_on_error": True}
    msg = client.session.msg("execute_request", content, metadata=metadata or {})
    execution = sys.modules[type(kernel).__module__].Execution(msg["header"]["msg_id"])
    kernel._pending[execution.msg_id] = execution
    if client is kernel.client:
        client.shell_channel.send(msg)
        return kernel.wait(execution, timeout)
    # a second client on the same kernel: collect its iopub messages itself
    client.shell_channel.send(msg)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            m = client.get_iopub_msg(timeout=1.0)
        except Exception:
            continue
        if m.get("parent_header", {}).get("msg_id") != execution.msg_id:
            continue
        execution.messages.append(m)
        if m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
            execution.reply = client.get_shell_msg(timeout=10)
            return execution
    raise TimeoutError(f"no idle for {execution.msg_id}")


def _widget_opens(execution: Execution) -> list[dict[str, Any]]:
    return [m for m in execution.of_type("comm_open") if m["content"].get("target_name") == "jupyter.widget"]


def _assert_text_view(execution: Execution) -> None:
    assert not execution.errors, execution.errors
    assert not _widget_opens(execution), "a widget was opened for a front end that cannot show it"
    assert not execution.data(WIDGET_VIEW)
    assert not any("RunPanel(" in text for text in execution.data("text/plain"))
    out = execution.stdout
    assert "[agent] iteration 1/" in out, out  # live progress lines, as the run goes
    assert "→ weather(" in out and "Paris" in out, out
    assert "sunny in Paris" in out, out


def _assert_widget_view(execution: Execution) -> None:
    assert not execution.errors, execution.errors
    assert _widget_opens(execution), [m["msg_type"] for m in execution.messages]
    assert execution.data(WIDGET_VIEW)
    assert "[agent] iteration" not in execution.stdout


def test_a_console_client_that_never_answers_comms_gets_the_text_view(kernel: Kernel) -> None:
    _send(kernel, SETUP)
    _assert_text_view(_send(kernel, RUN))
    decision = _send(kernel, "from menglong_magic.ui.frontend import why\nprint(why(get_ipython()))")
    assert "(False, 'no sign of a widget front end" in decision.stdout


def test_the_config_switch_overrides_detection(kernel: Kernel) -> None:
    _send(kernel, SETUP)
    _send(kernel, "%config AgentMagics.frontend = 'widgets'")
    _assert_widget_view(_send(kernel, RUN))
    _send(kernel, "%config AgentMagics.frontend = 'text'")
    _assert_text_view(_send(kernel, RUN, metadata={"cellId": "c1"}))


def test_a_notebook_ui_request_gets_widgets(kernel: Kernel) -> None:
    """JupyterLab, Notebook 7 and VS Code send the cell id in the execute_request metadata."""
    _send(kernel, SETUP, metadata={"cellId": "setup-cell"})
    _assert_widget_view(_send(kernel, RUN, metadata={"cellId": str(uuid.uuid4()), "deletedCells": [],
                                                      "recordTiming": False}))


def test_the_widget_control_comm_marks_that_connection_only(kernel: Kernel) -> None:
    """A front end that restores widget state on (re)connect gets widgets; another client stays on text."""
    _send(kernel, SETUP)
    # what ipywidgets' manager does on connect: open the control comm and request the states
    comm_id = uuid.uuid4().hex
    open_msg = kernel.client.session.msg(
        "comm_open", {"comm_id": comm_id, "target_name": "jupyter.widget.control", "data": {}},
        metadata={"version": "1.0.0"})
    kernel.client.shell_channel.send(open_msg)
    kernel.client.shell_channel.send(kernel.client.session.msg(
        "comm_msg", {"comm_id": comm_id, "data": {"method": "request_states"}}))
    _assert_widget_view(_send(kernel, RUN))

    # another front end on the same kernel (its own session id, as jupyter console --existing would have)
    other = kernel.km.client(session=Session(key=kernel.km.session.key,
                                             signature_scheme=kernel.km.session.signature_scheme))
    assert other.session.session != kernel.client.session.session
    other.start_channels()
    try:
        other.wait_for_ready(timeout=60)
        _assert_text_view(_send(kernel, RUN, client=other))
    finally:
        other.stop_channels()


def test_a_comm_info_request_for_widgets_marks_the_connection(kernel: Kernel) -> None:
    """The fallback of ipywidgets' manager when the kernel had no control comm target yet."""
    _send(kernel, SETUP)
    kernel.client.comm_info(target_name="jupyter.widget")
    reply = kernel.client.get_shell_msg(timeout=30)
    assert reply["msg_type"] == "comm_info_reply"
    _assert_widget_view(_send(kernel, RUN))


def test_nbclient_gets_widgets_and_saves_their_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MENGLONG_MODEL", "offline")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(SETUP), nbformat.v4.new_code_cell(RUN + ";")]
    client = NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = nb.cells[1].outputs
    assert not any("[agent] iteration" in o.get("text", "") for o in outputs), outputs
    # the panel's widget model was opened during the run (nbclient saved its state with the notebook) ...
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    assert any(m.get("model_name") == "AnyModel" or "_esm" in m.get("state", {}) for m in state.values()), state
    # ... and the cell shows the run's answer (the panel's final record)
    assert any("sunny in Paris" in str(o.get("data", {})) for o in outputs), outputs


@pytest.mark.skipif(shutil.which("jupyter-console", path=str(Path(sys.executable).parent)) is None,
                    reason="jupyter-console is not installed")
def test_real_jupyter_console_prints_progress_lines(tmp_path: Path) -> None:
    """``jupyter console --existing`` on a kernel: the run prints progress lines, not ``RunPanel('agent')``."""
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name="python3")
    km.ip = "127.0.0.1"
    km.connection_file = str(tmp_path / "kernel.json")
    km.start_kernel(cwd=str(tmp_path), env={**__import__("os").environ, "MENGLONG_MODEL": "offline"})
    try:
        # --simple-prompt submits every line: one-line statements only
        script = "\n".join([
            "%load_ext menglong_magic",
            "from menglong_magic import tool",
            "exec(" + repr(SETUP.split("from menglong_magic import tool")[1].strip()) + ")",
            RUN,
            "",
        ])
        console = Path(sys.executable).parent / "jupyter-console"
        proc = subprocess.run(
            [str(console), "--existing", km.connection_file, "--simple-prompt",
             "--ZMQTerminalInteractiveShell.banner="],
            input=script + "exit\n", capture_output=True, text=True, timeout=180)
    finally:
        km.shutdown_kernel(now=True)
    out = proc.stdout
    assert "RunPanel(" not in out, out
    assert "[agent] iteration 1/" in out, out + proc.stderr
    assert "sunny in Paris" in out, out
