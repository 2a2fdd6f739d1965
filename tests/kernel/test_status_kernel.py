"""The kernel's status while an agent cell runs, message by message (iopub status and its parent).

A front end that talks to the kernel while a cell runs (JupyterLab's widget manager sends a
``create_subshell_request`` on the control channel when the panel appears) gets busy → idle for its own
request; front ends show the latest status whatever its parent. After such an idle, the kernel must say
"busy" again for the running agent cell (menglong_magic/ipython/kernel_status.py), and only the cell's
own end says "idle".
"""

from __future__ import annotations

import queue
import time

import pytest
from conftest import Kernel

pytestmark = pytest.mark.kernel

SETUP = """
%load_ext menglong_magic
%config AgentMagics.frontend = 'widgets'
import asyncio
from menglong_magic import ChatAgent, tool
from menglong_magic.models import ScriptedModel, reply, calls, call

@tool
async def slow_step(seconds: float) -> str:
    '''A slow step.'''
    await asyncio.sleep(seconds)
    return 'waited'

def make_agent():
    return ChatAgent(model=ScriptedModel([calls(call('slow_step', {'seconds': 3})), reply('done')]),
                     mode='auto', tools=[slow_step], name='status-agent')
"""


def _statuses_of_a_run(kernel: Kernel, cell: str, control_type: str) -> tuple[str, str, list[tuple[str, str]]]:
    """Run ``cell``; once its panel is out, send a ``control_type`` request on the control channel.
    Returns (cell msg_id, control msg_id, [(execution_state, parent msg_id)] until the cell's idle)."""
    client = kernel.client
    cell_id = client.execute(cell, allow_stdin=False)
    control_id = ""
    statuses: list[tuple[str, str]] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            msg = client.get_iopub_msg(timeout=1.0)
        except queue.Empty:
            continue
        parent = msg.get("parent_header", {}).get("msg_id", "")
        if msg["msg_type"] == "status":
            statuses.append((msg["content"]["execution_state"], parent))
            if parent == cell_id and msg["content"]["execution_state"] == "idle":
                return cell_id, control_id, statuses
        elif parent == cell_id and msg["msg_type"] in ("display_data", "comm_open") and not control_id:
            request = client.session.msg(control_type, {})
            control_id = request["header"]["msg_id"]
            client.control_channel.send(request)
    raise TimeoutError(f"the cell did not end; statuses so far: {statuses}")


@pytest.mark.parametrize("control_type", ["kernel_info_request", "create_subshell_request"])
def test_the_status_is_busy_again_after_another_request_settles_during_an_agent_cell(
    kernel: Kernel, control_type: str
) -> None:
    kernel.ok(SETUP)
    if control_type == "create_subshell_request":
        info = kernel.ok("print(get_ipython().kernel._supports_kernel_subshells)")
        if info.stdout.strip() != "True":
            pytest.skip("this ipykernel has no subshells")
    cell = "agent = make_agent()\n%agent_run -a agent go"
    cell_id, control_id, statuses = _statuses_of_a_run(kernel, cell, control_type)
    assert control_id, "the panel never appeared"
    assert ("idle", control_id) in statuses  # the control request was settled for its sender
    settled = statuses.index(("idle", control_id))
    before_end = statuses[settled:-1]
    assert ("busy", cell_id) in before_end, statuses  # then the kernel says it is busy with the cell again
    assert before_end[-1][0] == "busy", statuses  # and nothing says idle until the cell ends


def test_outside_agent_cells_the_statuses_are_the_kernel_s_own(kernel: Kernel) -> None:
    kernel.ok(SETUP)
    cell_id, control_id, statuses = _statuses_of_a_run(
        kernel, "import ipywidgets, asyncio\ndisplay(ipywidgets.IntProgress())\nawait asyncio.sleep(2)",
        "kernel_info_request")
    assert control_id
    assert ("busy", cell_id) not in statuses[statuses.index(("idle", control_id)):]  # nothing added
    assert statuses[-1] == ("idle", cell_id)
