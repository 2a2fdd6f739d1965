"""Issue #29 in real kernels: a conversation survives a kernel restart, two kernels share one store, a kernel
killed with SIGKILL mid-turn leaves no half turn, and the history/log magics."""

from __future__ import annotations

import itertools
import json
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Kernel
from jupyter_client.manager import KernelManager

from menglong_magic.store import Store
from menglong_magic.testing import ScriptedOpenAIServer, call_tools, echo_responder, tool_call

pytestmark = pytest.mark.kernel

SETUP = "%load_ext menglong_magic\n%config AgentMagics.frontend = 'text'\n"


@pytest.fixture
def server() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer(responder=echo_responder(delay=0.01)) as s:
        yield s


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "store.sqlite"


@pytest.fixture
def start(server: ScriptedOpenAIServer, store_path: Path, tmp_path: Path) -> Iterator[Any]:
    """Start kernels whose models talk to the scripted server and whose store is ``store_path``."""
    started: list[Kernel] = []
    env = {k: v for k, v in os.environ.items() if k != "MENGLONG_MODEL"}
    env.update(OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY="unused-key-000", MENGLONG_OPENAI_MODEL="scripted",
               MENGLONG_STORE=str(store_path))

    def new() -> Kernel:
        km = KernelManager(kernel_name="python3")
        km.ip = "127.0.0.1"
        km.start_kernel(cwd=str(tmp_path), env=env)
        kernel = Kernel(km)
        started.append(kernel)
        return kernel

    yield new
    for kernel in started:
        kernel.client.stop_channels()
        if kernel.km.has_kernel:
            kernel.km.shutdown_kernel(now=True)


def user_texts(messages: list[dict[str, Any]]) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "user"]


def test_a_session_continues_after_a_kernel_restart(start: Any, server: ScriptedOpenAIServer, store_path: Path,
                                                    tmp_path: Path) -> None:
    kernel = start()
    kernel.ok(SETUP + "%config AgentMagics.session = 'analysis'")
    for text in ("one", "two", "three"):
        kernel.ok(f"%%agent -q\n{text}")
    kernel.km.restart_kernel(now=True)
    kernel.client.wait_for_ready(timeout=60)
    kernel.ok(SETUP + "%config AgentMagics.session = 'analysis'")
    server.reset_stats()
    out = kernel.ok("%%agent -q\nfour").stdout
    assert "echo: four" in out
    assert len(server.requests) == 1
    sent = [m for m in server.requests[0]["messages"] if m["role"] != "system"]
    assert [m["content"] for m in sent] == ["one", "echo: one", "two", "echo: two", "three", "echo: three", "four"]

    listing = kernel.ok("%agent_history").stdout
    assert "analysis" in listing and " 4 " in listing
    shown = kernel.ok("%agent_history analysis --last 2").stdout
    assert "user: three" in shown and "user: four" in shown and "user: two" not in shown
    kernel.ok(f"%agent_history export analysis --json {tmp_path / 'a.json'}")
    kernel.ok(f"%agent_history export analysis --md {tmp_path / 'a.md'}")
    exported = json.loads((tmp_path / "a.json").read_text())
    assert [user_texts(t["messages"]) for t in exported["turns"]] == [["one"], ["two"], ["three"], ["four"]]
    assert "**user**:\n\nfour" in (tmp_path / "a.md").read_text()

    log = kernel.ok("log = %agent_log --session analysis\nprint(len(log), list(log.to_pandas()['task']))").stdout
    assert log.strip() == "4 ['four', 'three', 'two', 'one']"
    table = kernel.ok("%agent_log -n 2").data()
    assert table and "four" in table[-1] and "one" not in table[-1]

    reset = kernel.ok("%agent_reset").stdout
    assert "history cleared" in reset and "stored session 'analysis' was kept" in reset
    forgot = kernel.ok("%agent_history forget analysis --runs").stdout
    assert "5 stored turn(s) and 4 run-log row(s) deleted" in forgot  # 4 turns and the reset mark
    bad = kernel.run("%agent_history show nosuch")
    assert "UsageError: no session 'nosuch'" in bad.stderr + str(bad.errors)


def test_the_session_flag_picks_a_saved_conversation_per_cell(start: Any, server: ScriptedOpenAIServer,
                                                              store_path: Path) -> None:
    kernel = start()
    kernel.ok(SETUP)
    kernel.ok("%%agent -q --session notes\nfirst note")
    kernel.ok("%%agent -q\nunsaved")
    kernel.ok("%agent_run -q --session notes second note")
    assert user_texts(Store(store_path).load("notes")) == ["first note", "second note"]
    sent = server.requests[-1]["messages"]
    assert "unsaved" not in [m.get("content") for m in sent]  # the default agent's conversation is another one
    bad = kernel.run("%agent_run -a notes --session notes task")
    assert "UsageError: -a and --session" in bad.stderr + str(bad.errors)


def test_two_kernels_writing_one_store_lose_and_mix_nothing(start: Any, store_path: Path, tmp_path: Path) -> None:
    go = tmp_path / "go"
    kernels = [start(), start()]
    cell = ("from menglong_magic import ChatAgent\nimport asyncio, os\nagent = ChatAgent(session={name!r})\n"
            f"while not os.path.exists({str(go)!r}):\n    await asyncio.sleep(0.01)\n"
            "for i in range(50):\n    await agent.chat_async(f'{name}-{{i}}')\nprint('done')")
    runs = [k.submit(cell.format(name=name)) for k, name in zip(kernels, ("A", "B"), strict=True)]
    go.touch()
    for kernel, execution in zip(kernels, runs, strict=True):
        kernel.wait(execution, timeout=300)
        assert not execution.errors, execution.errors
        assert execution.stdout.strip() == "done", execution.stderr
    store = Store(store_path)
    for name in ("A", "B"):
        messages = store.load(name)
        assert user_texts(messages) == [f"{name}-{i}" for i in range(50)]
        assert [m["content"] for m in messages if m["role"] == "assistant"] == [f"echo: {name}-{i}" for i in range(50)]
        assert [t.seq for t in store.turns(name)] == list(range(1, 51))
    rows = sqlite3.connect(str(store_path)).execute("SELECT session FROM runs ORDER BY id").fetchall()
    order = [r[0] for r in rows]
    assert sorted(order) == ["A"] * 50 + ["B"] * 50
    switches = sum(a != b for a, b in itertools.pairwise(order))
    assert switches >= 2, order  # the two kernels' writes really interleaved
    store.close()


def test_sigkill_in_the_middle_of_a_turn_leaves_no_half_turn(start: Any, server: ScriptedOpenAIServer,
                                                             store_path: Path, tmp_path: Path) -> None:
    marker = tmp_path / "tool-started"
    kernel = start()
    kernel.ok(SETUP + "%config AgentMagics.session = 'k'\n"
              "import time\nfrom menglong_magic import tool\n"
              f"@tool\ndef slow() -> str:\n    '''A slow tool.'''\n    open({str(marker)!r}, 'w').close()\n"
              "    time.sleep(120)\n    return 'never'\n")
    kernel.ok("%%agent -q\nfirst")
    server.enqueue(call_tools(tool_call("slow")))
    execution = kernel.submit("%%agent -q\nsecond")
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert time.monotonic() < deadline, "the tool never started"
        time.sleep(0.05)
    # The tool call round of the second turn is in the kernel's memory only; kill the kernel now.
    os.kill(kernel.km.provisioner.process.pid, signal.SIGKILL)  # type: ignore[union-attr]
    kernel.km.provisioner.process.wait(timeout=30)  # type: ignore[union-attr]
    del execution
    db = sqlite3.connect(str(store_path))
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    store = Store(store_path)
    (turn,) = store.turns("k")
    assert [m["role"] for m in turn.messages] == ["user", "assistant"] and user_texts(turn.messages) == ["first"]
    assert [r["task"] for r in store.runs(session="k")] == ["first"]
    store.close()
    kernel.client.stop_channels()
    fresh = start()
    fresh.ok(SETUP + "%config AgentMagics.session = 'k'")
    server.reset_stats()
    fresh.ok("%%agent -q\nthird")
    assert [m["content"] for m in server.requests[-1]["messages"] if m["role"] != "system"] == [
        "first", "echo: first", "third"]
