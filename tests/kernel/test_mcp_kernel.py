"""MCP servers used from a real ipykernel: the stdio case of python-sdk#1103, %agent_mcp, and clean-up by pid."""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Kernel
from jupyter_client.manager import KernelManager

pytest.importorskip("mcp")
pytestmark = pytest.mark.kernel

SERVER = str(Path(__file__).resolve().parents[1] / "integration" / "mcp_test_server.py")
SETUP = f"""
%load_ext menglong_magic
import sys
from menglong_magic import ChatAgent
from menglong_magic.tools.mcp import MCPServer
from menglong_magic.models import ScriptedModel, reply, calls, call
SERVER = {SERVER!r}
"""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def wait_gone(pid: int, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


def value(kernel: Kernel, expression: str) -> str:
    return kernel.ok(f"print({expression})").stdout.strip()


def test_stdio_server_inside_ipykernel_across_cells(kernel: Kernel) -> None:
    """The #1103 case: the kernel's sys.stderr has no fileno, yet a stdio server starts and serves."""
    kernel.ok(SETUP)
    assert value(kernel, "sys.stderr.__class__.__name__") == "OutStream"
    no_fileno = kernel.ok("try:\n    sys.stderr.fileno()\nexcept Exception as e:\n    print(type(e).__name__)")
    assert no_fileno.stdout.strip() == "UnsupportedOperation"
    kernel.ok("server = MCPServer.stdio(sys.executable, [SERVER], name='demo')\n"
              "agent = ChatAgent(model=ScriptedModel([calls(call('word_stats', {'text': 'one two'})), reply('two'),"
              " calls(call('crash', {'message': 'kernel-side crash'})), reply('it crashed'),"
              " calls(call('word_stats', {'text': 'a b c'})), reply('three')]), mode='auto', mcp_servers=[server])")
    first = kernel.ok("r = await agent.arun('count')\nprint(r.final_output, r.tool_calls[0].result)")
    assert "two" in first.stdout and '"words": 2' in first.stdout
    pid = int(value(kernel, "server.pid"))
    assert pid_alive(pid)
    # another cell, another task: the same session and process
    crashed = kernel.ok("r = await agent.arun('crash')\nprint(r.final_output)\nprint(r.tool_calls[0].error)")
    assert "it crashed" in crashed.stdout and "died (exit code 3)" in crashed.stdout
    assert "kernel-side crash" in crashed.stdout and wait_gone(pid)
    again = kernel.ok("r = await agent.arun('count again')\nprint(r.tool_calls[0].result, server.pid)")
    assert '"words": 3' in again.stdout
    new_pid = int(again.stdout.split()[-1])
    assert new_pid != pid and pid_alive(new_pid)
    kernel.ok("await agent.aclose()")
    assert wait_gone(new_pid)


def test_agent_mcp_magic_add_list_run_remove(kernel: Kernel) -> None:
    kernel.ok(SETUP)
    added = kernel.ok(f"%agent_mcp add demo -- {sys.executable} {SERVER}")
    assert "added MCP server 'demo' to agent" in added.stdout
    assert "tools: word_stats, slow_count, crash" in added.stdout
    listed = kernel.ok("%agent_mcp list")
    match = re.search(r"demo: stdio .*mcp_test_server.py \[running, pid (\d+)\]", listed.stdout)
    assert match, listed.stdout
    pid = int(match[1])
    assert pid_alive(pid)
    assert value(kernel, "[t.name for t in get_ipython().magics_manager.registry['AgentMagics']"
                         ".default_agent().toolsets]") == "['demo']"
    kernel.ok("%agent_mcp remove demo")
    assert wait_gone(pid)
    assert "no MCP servers" in kernel.ok("%agent_mcp list").stdout

    # -a AGENT, and a run through %agent_run using the server's tools
    kernel.ok("mine = ChatAgent(model=ScriptedModel([calls(call('slow_count', {'n': 2, 'delay': 0.01})), "
              "reply('counted')]), mode='auto')")
    kernel.ok(f"%agent_mcp add -a mine counter -e DEMO=1 -- {sys.executable} {SERVER}")
    run = kernel.ok("%agent_run -a mine -q -o res count to two\nprint(res.tool_calls[0].result)")
    assert "counted to 2" in run.stdout
    assert "counter: stdio" in kernel.ok("%agent_mcp list -a mine").stdout

    # a server that cannot start: the cell says why, with its stderr, and nothing is added
    code = "import sys; print('no config here', file=sys.stderr); sys.exit(2)"
    failed = kernel.run(f'%agent_mcp add broken -- {sys.executable} -c "{code}"')
    assert failed.errors and "MCPMagicError" in failed.errors[0]["ename"]
    rendered = "\n".join(failed.errors[0]["traceback"])
    assert "failed to start" in rendered and "no config here" in rendered
    assert "broken" not in kernel.ok("%agent_mcp list").stdout

    bad = kernel.run("%agent_mcp remove nosuch")
    assert "UsageError" in bad.stderr and "no MCP server 'nosuch'" in bad.stderr


def test_unload_ext_closes_the_servers(kernel: Kernel) -> None:
    kernel.ok(SETUP)
    kernel.ok(f"%agent_mcp add demo -- {sys.executable} {SERVER}")
    pid = int(value(kernel, "get_ipython().magics_manager.registry['AgentMagics'].default_agent().toolsets[0].pid"))
    assert pid_alive(pid)
    kernel.ok("%unload_ext menglong_magic")
    assert wait_gone(pid)
    assert "%agent_mcp` not found" in kernel.run("%agent_mcp list").stderr  # gone with the extension


@pytest.fixture
def own_kernel(tmp_path: Any) -> Iterator[tuple[KernelManager, Kernel]]:
    km = KernelManager(kernel_name="python3")
    km.ip = "127.0.0.1"
    km.start_kernel(cwd=str(tmp_path))
    k = Kernel(km)
    try:
        yield km, k
    finally:
        k.client.stop_channels()
        if km.has_kernel:
            km.shutdown_kernel(now=True)


@pytest.mark.parametrize("now", [False, True], ids=["shutdown", "killed"])
def test_no_server_process_left_after_kernel_shutdown(own_kernel: tuple[KernelManager, Kernel], now: bool) -> None:
    """A graceful shutdown closes the servers at exit; a killed kernel's stdio child sees EOF and exits."""
    km, kernel = own_kernel
    kernel.ok(SETUP)
    kernel.ok(f"%agent_mcp add demo -- {sys.executable} {SERVER}")
    kernel.ok("http_like = MCPServer.stdio(sys.executable, [SERVER], name='second')\n"
              "await http_like.list_tools()")
    pids = [int(p) for p in value(kernel, "[s.pid for s in __import__('menglong_magic.tools.mcp', "
                                          "fromlist=['x']).open_servers()]").strip("[]").split(",")]
    assert len(pids) == 2 and all(pid_alive(p) for p in pids)
    kernel.client.stop_channels()
    km.shutdown_kernel(now=now)
    assert all(wait_gone(p) for p in pids), [p for p in pids if pid_alive(p)]
