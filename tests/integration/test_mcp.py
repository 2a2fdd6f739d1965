"""MCP servers as agent tools: real servers written with the ``mcp`` package, the real ``openai`` client over HTTP.

One server runs over stdio as a child process, one over streamable HTTP on 127.0.0.1 (a free port); both are
``tests/integration/mcp_test_server.py`` (the shipped ``examples/mcp_server.py`` plus test-only tools).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mcp")

from menglong_magic import ChatAgent, tool
from menglong_magic import events as ev
from menglong_magic.models import OpenAIModel, RetryPolicy
from menglong_magic.testing import call_tools, free_port, reply, tool_call
from menglong_magic.tools.mcp import MCPServer, MCPServerError, close_all, open_servers

HERE = Path(__file__).resolve().parent
SERVER = str(HERE / "mcp_test_server.py")
PLANTED = "sk-planted-PARENT-SECRET-0123456789"


def make_agent(openai_server: Any, **kw: Any) -> ChatAgent:
    model = OpenAIModel("scripted", base_url=openai_server.base_url, api_key="sk-test",
                        retry=RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.1))
    return ChatAgent(model=model, mode="auto", **kw)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def wait_gone(pid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
async def stdio_server() -> Any:
    server = MCPServer.stdio(sys.executable, [SERVER], name="demo")
    try:
        yield server
    finally:
        await server.aclose()


@pytest.fixture
def http_server_url(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The test server over streamable HTTP on 127.0.0.1 and a free port, in a child process stopped after."""
    port = free_port()
    log = open(tmp_path / "http_server.log", "wb")
    process = subprocess.Popen([sys.executable, SERVER, "--http", "--port", str(port)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((tmp_path / "http_server.log").read_text()) from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp", process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


# ---------------------------------------------------------------------------------------------- stdio


async def test_stdio_tools_as_the_server_gives_them(stdio_server: MCPServer) -> None:
    assert stdio_server.state == "closed" and stdio_server.pid is None  # lazy: nothing started yet
    tools = {t.name: t for t in await stdio_server.list_tools()}
    assert {"word_stats", "slow_count", "crash", "getenv", "fail", "add_tool"} <= set(tools)
    assert stdio_server.state == "running" and stdio_server.pid is not None
    schema = tools["word_stats"].schema()["function"]
    assert schema["description"] == "Count the words, characters and lines of a text."
    assert schema["parameters"]["properties"]["text"]["type"] == "string"
    assert schema["parameters"]["required"] == ["text"]
    pid = stdio_server.pid
    assert await stdio_server.list_tools() and stdio_server.pid == pid  # cached: same process, no restart
    await stdio_server.aclose()
    assert stdio_server.state == "closed" and wait_gone(pid)


async def test_stdio_run_text_structured_error_and_progress(openai_server: Any, stdio_server: MCPServer) -> None:
    openai_server.enqueue(
        call_tools(tool_call("word_stats", {"text": "one two three"}), tool_call("fail", {"message": "no way"}),
                   tool_call("slow_count", {"n": 4, "delay": 0.01})),
        reply("done"),
    )
    agent = make_agent(openai_server, mcp_servers=[stdio_server])
    events: list[ev.Event] = []
    result = await agent.arun("use the tools", on_event=events.append)
    assert result.final_output == "done"
    calls = {c.name: c for c in result.tool_calls}
    assert '"words": 3' in calls["word_stats"].result and calls["word_stats"].error is None
    assert calls["fail"].error is not None and "no way" in calls["fail"].error
    assert calls["slow_count"].result == "counted to 4"
    tool_messages = [m for m in openai_server.requests[1]["messages"] if m["role"] == "tool"]
    assert '"words": 3' in tool_messages[0]["content"]
    assert tool_messages[1]["content"].startswith("Error:") and "no way" in tool_messages[1]["content"]
    progress = [e for e in events if isinstance(e, ev.ToolProgress)]
    assert [(p.done, p.total) for p in progress] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert progress[-1].name == "slow_count" and progress[-1].note == "counted to 4"
    assert {e.call_id for e in progress} == {c.id for c in result.tool_calls if c.name == "slow_count"}


async def test_server_crash_mid_run_is_a_tool_error_and_it_restarts(openai_server: Any,
                                                                    stdio_server: MCPServer) -> None:
    openai_server.enqueue(
        call_tools(tool_call("crash", {"message": "segfault in the flux capacitor"})),
        call_tools(tool_call("word_stats", {"text": "still here"})),
        reply("recovered"),
    )
    agent = make_agent(openai_server, mcp_servers=[stdio_server])
    await stdio_server.list_tools()
    first_pid = stdio_server.pid
    result = await agent.arun("crash it, then count")
    assert result.final_output == "recovered" and result["task_completed"]
    crash, stats = result.tool_calls
    assert crash.error is not None
    assert "died (exit code 3)" in crash.error and "segfault in the flux capacitor" in crash.error
    assert stats.error is None and '"words": 2' in stats.result  # the next call started a new process
    assert stdio_server.pid not in (None, first_pid) and not pid_alive(first_pid)
    model_saw = next(m for m in openai_server.requests[1]["messages"] if m["role"] == "tool")["content"]
    assert "segfault in the flux capacitor" in model_saw


async def test_start_failure_quotes_the_servers_stderr() -> None:
    code = "import sys; print('config file /etc/demo.toml missing', file=sys.stderr); sys.exit(4)"
    server = MCPServer.stdio(sys.executable, ["-c", code], name="broken")
    with pytest.raises(MCPServerError) as info:
        await server.list_tools()
    message = str(info.value)
    assert "failed to start" in message and "config file /etc/demo.toml missing" in message
    assert "exited with code 4" in message and server.state == "failed"
    missing = MCPServer.stdio("/nonexistent/mcp-server-binary")
    with pytest.raises(MCPServerError, match="command not found"):
        await missing.list_tools()


async def test_child_environment_has_no_parent_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", PLANTED)
    monkeypatch.setenv("MY_DB_PASSWORD", PLANTED)
    server = MCPServer.stdio(sys.executable, [SERVER], env={"DEMO_SETTING": "given"}, name="envcheck")
    try:
        async def getenv(name: str) -> str:
            return str((await server.call_tool("getenv", {"name": name})).content[0].text)

        assert await getenv("OPENAI_API_KEY") == "<unset>"
        assert await getenv("MY_DB_PASSWORD") == "<unset>"
        assert await getenv("DEMO_SETTING") == "given"
        assert await getenv("PATH") == os.environ["PATH"]
        environ = await asyncio.to_thread(Path(f"/proc/{server.pid}/environ").read_bytes)
        assert PLANTED.encode() not in environ and b"DEMO_SETTING=given" in environ
        assert PLANTED not in repr(server) and "given" not in repr(server)
    finally:
        await server.aclose()


async def test_refresh_sees_a_tool_added_at_run_time(stdio_server: MCPServer) -> None:
    before = {t.name for t in await stdio_server.list_tools()}
    assert "late_tool" not in before
    await stdio_server.call_tool("add_tool", {"name": "late_tool"})
    assert {t.name for t in await stdio_server.list_tools()} == before  # cached until refreshed
    after = {t.name for t in await stdio_server.refresh()}
    assert after == before | {"late_tool"}
    late = {t.name: t for t in await stdio_server.list_tools()}["late_tool"]
    assert await late.call({}) == "hello from late_tool"


async def test_name_clash_is_prefixed_with_the_server_name(openai_server: Any, stdio_server: MCPServer) -> None:
    @tool
    def word_stats(text: str) -> str:
        """A local tool with the same name as the server's."""
        return "local"

    openai_server.enqueue(call_tools(tool_call("word_stats", {"text": "a"}), tool_call("demo_word_stats",
                                                                                       {"text": "a b"})),
                          reply("ok"))
    agent = make_agent(openai_server, tools=[word_stats], mcp_servers=[stdio_server])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = await agent.arun("stats")
    offered = [t["function"]["name"] for t in openai_server.requests[0]["tools"]]
    assert "word_stats" in offered and "demo_word_stats" in offered
    assert any("demo_word_stats" in str(w.message) for w in caught)
    local, remote = result.tool_calls
    assert local.result == "local" and '"words": 2' in remote.result


async def test_agent_aclose_and_async_with_close_servers(openai_server: Any) -> None:
    server = MCPServer.stdio(sys.executable, [SERVER], name="ctx")
    openai_server.enqueue(call_tools(tool_call("word_stats", {"text": "x"})), reply("ok"))
    async with make_agent(openai_server, mcp_servers=[server]) as agent:
        await agent.arun("go")
        pid = server.pid
        assert pid is not None and server in open_servers()
    assert server.state == "closed" and wait_gone(pid) and server not in open_servers()
    # closed is not dead: the agent reopens it on use
    openai_server.enqueue(call_tools(tool_call("word_stats", {"text": "x y"})), reply("again"))
    result = await agent.arun("go again")
    assert '"words": 2' in result.tool_calls[0].result and server.state == "running"
    pid = server.pid
    await agent.aclose()
    assert pid is not None and wait_gone(pid)


async def test_session_is_shared_by_runs_in_different_tasks(openai_server: Any, stdio_server: MCPServer) -> None:
    """Each cell of a notebook runs in its own task: the session must survive the task that opened it."""
    agent = make_agent(openai_server, mcp_servers=[stdio_server])
    for i in range(3):
        openai_server.enqueue(call_tools(tool_call("word_stats", {"text": "a " * (i + 1)})), reply(f"r{i}"))
        result = await asyncio.create_task(agent.arun(f"run {i}"))
        assert f'"words": {i + 1}' in result.tool_calls[0].result
    assert stdio_server.state == "running"


async def test_cancelled_run_leaves_the_server_usable(openai_server: Any, stdio_server: MCPServer) -> None:
    openai_server.enqueue(call_tools(tool_call("slow", {"seconds": 30})))
    agent = make_agent(openai_server, mcp_servers=[stdio_server])
    await stdio_server.list_tools()
    task = asyncio.create_task(agent.arun("sleep"))
    for _ in range(500):  # until the tool call is under way
        if openai_server.requests:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    result = await stdio_server.call_tool("word_stats", {"text": "alive and well"})
    assert result.structured_content["words"] == 3


def test_close_all_without_a_running_loop_and_sync_run(openai_server: Any) -> None:
    """Scripts: the sync twins reuse one loop per thread; close_all() from sync code stops the child."""
    server = MCPServer.stdio(sys.executable, [SERVER], name="sync")
    openai_server.enqueue(call_tools(tool_call("word_stats", {"text": "a b c d"})), reply("ok"))
    agent = make_agent(openai_server, mcp_servers=[server])
    result = agent.run("count")
    assert '"words": 4' in result.tool_calls[0].result
    pid = server.pid
    assert pid is not None
    close_all()
    assert server.state == "closed" and wait_gone(pid)


# ---------------------------------------------------------------------------------------------- HTTP


async def test_http_server_run_progress_and_dead_server(openai_server: Any, http_server_url: Any) -> None:
    url, process = http_server_url
    server = MCPServer.http(url, headers={"Authorization": "Bearer " + PLANTED}, name="remote")
    assert PLANTED not in repr(server) and server.pid is None
    try:
        openai_server.enqueue(
            call_tools(tool_call("slow_count", {"n": 3, "delay": 0.01}), tool_call("fail", {"message": "bad input"})),
            reply("half done"),
        )
        agent = make_agent(openai_server, mcp_servers=[server])
        events: list[ev.Event] = []
        result = await agent.arun("count", on_event=events.append)
        count, failed = result.tool_calls
        assert count.result == "counted to 3" and "bad input" in (failed.error or "")
        assert [p.done for p in events if isinstance(p, ev.ToolProgress)] == [1, 2, 3]
        # the server goes away mid-session: a tool error, and the run goes on
        process.terminate()
        process.wait(10)
        openai_server.enqueue(call_tools(tool_call("word_stats", {"text": "x"})), reply("the server is gone"))
        result = await agent.arun("again")
        assert result.final_output == "the server is gone"
        assert "became unreachable" in (result.tool_calls[0].error or "") and server.state == "dead"
        assert PLANTED not in (result.tool_calls[0].error or "")
    finally:
        await server.aclose()


async def test_http_refresh(http_server_url: Any) -> None:
    url, _ = http_server_url
    server = MCPServer.http(url)
    try:
        before = {t.name for t in await server.list_tools()}
        await server.call_tool("add_tool", {"name": "via_http"})
        assert {t.name for t in await server.refresh()} == before | {"via_http"}
    finally:
        await server.aclose()
