"""The magics in a real ipykernel: same loop, ordering, interrupt, --bg, fallbacks, the live panel."""

from __future__ import annotations

import time

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.kernel

SETUP = """
%load_ext menglong_magic
import asyncio, time
from menglong_magic import ChatAgent, tool
from menglong_magic.models import ScriptedModel, reply, calls, call

@tool
async def loop_id() -> int:
    \"\"\"The id of the running event loop.\"\"\"
    return id(asyncio.get_running_loop())

@tool
async def slow(seconds: float) -> str:
    \"\"\"Sleep a while.\"\"\"
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        cancelled.append(seconds)
        raise
    return f"slept {seconds}"

cancelled = []
"""


def test_run_is_on_the_kernels_own_loop(kernel):
    kernel.ok(SETUP)
    kernel.ok("outer = id(asyncio.get_running_loop())")
    kernel.ok("agent = ChatAgent(model='offline', mode='auto', tools=[loop_id])")
    kernel.ok("r = %agent_run -a agent -q which loop")
    out = kernel.ok("print(r.tool_calls[0].result == str(outer), r.stop_reason)")
    assert out.stdout.strip() == "True completed"


def test_fallback_from_a_function_uses_the_same_loop(kernel):
    kernel.ok(SETUP)
    kernel.ok("outer = id(asyncio.get_running_loop())")
    kernel.ok("agent = ChatAgent(model='offline', mode='auto', tools=[loop_id])")
    kernel.ok("def go():\n"
              "    return get_ipython().run_line_magic('agent_run', '-a agent -q inside a function')\n"
              "r = go()")
    out = kernel.ok("print(r.tool_calls[0].result == str(outer), r.stop_reason)")
    assert out.stdout.strip() == "True completed"
    # a loop body and run_cell_magic from code, with a later queued cell still executed
    kernel.submit("for i in range(2):\n    res = get_ipython().run_cell_magic('agent', '-a agent -q', f'hello {i}')")
    later = kernel.submit("print('later cell ran', res.stop_reason)")
    kernel.wait(later)
    assert later.stdout.strip() == "later cell ran completed"


def test_autoawait_off_still_works(kernel):
    kernel.ok(SETUP)
    kernel.ok("%autoawait off")
    kernel.ok("agent = ChatAgent(model='offline', mode='auto', tools=[loop_id])")
    kernel.ok("r = %agent_run -a agent -q no autoawait")
    out = kernel.ok("print(r.stop_reason)")
    assert out.stdout.strip() == "completed"


def test_interrupt_ends_the_cell_as_interrupted_and_aborts_queued_cells(kernel):
    kernel.ok(SETUP)
    kernel.ok("agent = ChatAgent(model=ScriptedModel([calls(call('slow', {'seconds': 30})), reply('never')]), "
              "mode='auto', tools=[slow])")
    running = kernel.submit("r = %agent_run -a agent -q long task")
    queued = kernel.submit("print('queued cell ran')")
    time.sleep(2.0)
    started = time.monotonic()
    kernel.km.interrupt_kernel()
    kernel.wait(running, timeout=30)
    elapsed = time.monotonic() - started
    assert elapsed < 5, f"interrupt took {elapsed:.1f}s"  # generous bound; measured ~0.2 s
    # Like any interrupted cell: an error reply (so Run All / nbclient stop), a two-line message.
    assert running.reply["content"]["status"] == "error"
    assert running.errors and running.errors[0]["ename"] == "AgentInterrupted"
    assert len(running.errors[0]["traceback"]) == 2
    assert "_agent_last" in running.errors[0]["traceback"][1]
    # The queued cell was aborted, not run.
    kernel.wait(queued, timeout=30)
    assert queued.reply["content"]["status"] == "aborted"
    assert "queued cell ran" not in queued.stdout
    out = kernel.ok("print(cancelled, _agent_last.stop_reason, len(agent.messages))")
    assert out.stdout.split()[0] == "[30.0]"  # the tool saw the cancellation
    assert "cancelled" in out.stdout
    # nothing half-done was kept: the cancelled tool call had no result, so the turn was rolled back
    assert out.stdout.split()[-1] == "0"
    nxt = kernel.ok("%%agent -a agent -q\nare you there?")
    assert "never" in nxt.stdout  # the model's next scripted answer, shown once by the view
    out = kernel.ok("print([m['role'] for m in agent.messages])")
    assert out.stdout.strip() == "['user', 'assistant']"


def test_bg_returns_at_once_and_later_cells_run(kernel):
    kernel.ok(SETUP)
    kernel.ok("agent = ChatAgent(model=ScriptedModel([calls(call('slow', {'seconds': 3})), reply('bg done')]), "
              "mode='auto', tools=[slow])")
    t0 = time.monotonic()
    kernel.ok("h = %agent_run -a agent -q --bg background work")
    out = kernel.ok("print(h.done())")
    assert out.stdout.strip() == "False"
    assert time.monotonic() - t0 < 2.5
    done = kernel.ok("r = await h\nprint(r.final_output, h.done())")
    assert done.stdout.strip() == "bg done True"


def test_run_all_waits_for_each_run(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(SETUP),
        nbformat.v4.new_code_cell("agent = ChatAgent(model=ScriptedModel([calls(call('slow', {'seconds': 1})), "
                                  "reply('first')]), mode='auto', tools=[slow])"),
        nbformat.v4.new_code_cell("r = %agent_run -a agent -q the task"),
        nbformat.v4.new_code_cell("print(r.final_output, r.stop_reason)"),
    ]
    NotebookClient(nb, timeout=60, kernel_name="python3").execute(cwd=str(tmp_path))
    assert nb.cells[3].outputs[0]["text"].strip() == "first completed"


def test_panel_updates_arrive_live_and_a_static_record_stays(kernel):
    kernel.ok(SETUP)
    kernel.ok("agent = ChatAgent(model=ScriptedModel([calls(call('slow', {'seconds': 0.6})), "
              "calls(call('slow', {'seconds': 0.6})), reply('all <b>done</b>')]), mode='auto', tools=[slow])")
    run = kernel.ok("r = %agent_run -a agent the panel task")
    updates = [m for m in run.of_type("comm_msg") if m["content"]["data"].get("method") == "update"]
    idle = run.messages[-1]["_received"]
    assert len(updates) >= 3  # one per moment something happens (start, tool round, end), coalesced
    assert all(m["_received"] <= idle for m in updates)
    spread = updates[-1]["_received"] - updates[0]["_received"]
    assert spread > 0.6, f"updates not spread over the run ({spread:.2f}s)"
    html = run.data("text/html")
    assert html and "all &lt;b&gt;done&lt;/b&gt;" in html[-1]
    assert any("completed" in text for text in run.data("text/plain"))


def test_model_failure_is_short_and_partial_result_kept(kernel):
    kernel.ok(SETUP)
    kernel.ok("agent = ChatAgent(model=ScriptedModel([RuntimeError('backend down')]), mode='auto')")
    run = kernel.run("%agent_run -a agent -q -o partial doomed")
    assert run.errors and run.errors[0]["ename"] == "AgentRunFailed"
    assert not run.of_type("execute_result")
    assert len(run.errors[0]["traceback"]) <= 3
    out = kernel.ok("print(partial.stop_reason, partial.error)")
    assert out.stdout.strip() == "error backend down"
