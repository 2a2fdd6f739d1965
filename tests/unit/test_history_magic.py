"""%agent_history, %agent_log, --session and %config AgentMagics.store/session in an in-process IPython shell."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from menglong_magic import ChatAgent
from menglong_magic.models import ScriptedModel
from menglong_magic.store import Store, configured_store_path, set_default_store


@pytest.fixture
def shell(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[InteractiveShell]:
    monkeypatch.setenv("MENGLONG_MODEL", "offline")
    monkeypatch.delenv("MENGLONG_STORE", raising=False)
    sh = InteractiveShell.instance()
    sh.reset()
    sh.run_line_magic("load_ext", "menglong_magic")
    sh.run_line_magic("config", f"AgentMagics.store = {str(tmp_path / 'store.sqlite')!r}")
    yield sh
    sh.run_line_magic("config", "AgentMagics.store = None")
    sh.run_line_magic("config", "AgentMagics.session = None")
    sh.run_line_magic("unload_ext", "menglong_magic")
    set_default_store(None)


def test_config_store_turns_the_run_log_on_for_python_agents(shell: InteractiveShell, tmp_path: Path) -> None:
    assert configured_store_path() == tmp_path / "store.sqlite"
    ChatAgent(model=ScriptedModel(["fine"]), name="py").chat("from python")
    log = shell.run_line_magic("agent_log", "")
    assert [row["task"] for row in log] == ["from python"] and log[0]["agent"] == "py"
    assert shell.run_line_magic("agent_log", "--status error").rows == []
    with pytest.raises(UsageError, match="since"):
        shell.run_line_magic("agent_log", "--since yesterday")


def test_history_list_show_export_import_forget(shell: InteractiveShell, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    shell.run_line_magic("config", "AgentMagics.session = 'work'")
    shell.run_cell_magic("agent", "-q", "first message")
    shell.run_line_magic("agent_run", "-q --session side side task")
    capsys.readouterr()
    shell.run_line_magic("agent_history", "")
    listing = capsys.readouterr().out
    assert "work" in listing and "side" in listing
    shell.run_line_magic("agent_history", "work")
    assert "user: first message" in capsys.readouterr().out
    with pytest.raises(UsageError, match="exactly one"):
        shell.run_line_magic("agent_history", "export work")
    with pytest.raises(UsageError, match="no session"):
        shell.run_line_magic("agent_history", "export nosuch --md x.md")
    shell.run_line_magic("agent_history", f"export work --json {tmp_path / 'w.json'}")
    shell.run_line_magic("agent_history", f"import {tmp_path / 'w.json'} --as copy")
    store = Store(tmp_path / "store.sqlite")
    assert store.load("copy") == store.load("work") and len(store.load("work")) == 2
    assert json.loads((tmp_path / "w.json").read_text())["session"] == "work"
    capsys.readouterr()
    shell.run_line_magic("agent_reset", "")
    assert "stored session 'work' was kept" in capsys.readouterr().out
    shell.run_line_magic("agent_history", "forget side")
    assert "its run-log rows stay" in capsys.readouterr().out
    assert not store.has_session("side") and store.runs(session="side").rows
    store.close()


def test_history_of_a_store_that_does_not_exist_creates_nothing(shell: InteractiveShell, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere" / "s.sqlite"
    shell.run_line_magic("agent_history", f"--store {missing}")
    assert "no stored sessions" in capsys.readouterr().out
    assert len(shell.run_line_magic("agent_log", f"--store {missing}")) == 0
    assert not missing.exists() and not missing.parent.exists()


def test_reset_before_the_first_turn_of_a_configured_session_starts_it_afresh(
        shell: InteractiveShell, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ChatAgent(model=ScriptedModel(["old answer"]), session="s").chat("old question")  # an earlier kernel's turn
    shell.run_line_magic("config", "AgentMagics.session = 's'")
    shell.run_line_magic("agent_reset", "")
    assert "stored session 's' was kept" in capsys.readouterr().out
    shell.run_cell_magic("agent", "-q", "new question")
    sent = shell.user_ns["_agent_last"]
    assert sent.stop_reason == "completed"
    agent = shell.magics_manager.registry["AgentMagics"].default_agent()
    assert [m["content"] for m in agent.messages if m["role"] == "user"] == ["new question"]
    store = Store(tmp_path / "store.sqlite")
    assert [m["content"] for m in store.load("s") if m["role"] == "user"] == ["new question"]
    store.close()


def test_session_flag_is_shared_by_the_running_magics(shell: InteractiveShell, tmp_path: Path) -> None:
    # --session is in the magics' shared flags (ipython/options.py): %agent_map takes it too. Its items are
    # isolated turns: logged under the session, never added to the conversation.
    shell.user_ns["cities"] = ["Lyon", "Oslo", "Quito"]
    result = shell.run_line_magic("agent_map", "-q --session mapped cities Describe {}")
    assert len(result) == 3
    store = Store(tmp_path / "store.sqlite")
    rows = store.runs(session="mapped").rows
    assert sorted(row["task"] for row in rows) == ["Describe Lyon", "Describe Oslo", "Describe Quito"]
    assert not store.has_session("mapped")
    store.close()
    shell.user_ns["helper"] = ChatAgent(model=ScriptedModel([]), name="helper")
    for run in (lambda: shell.run_line_magic("agent_map", "-a helper --session s cities Describe {}"),
                lambda: shell.run_line_magic("agent_run", "-a helper --session s a task"),
                lambda: shell.run_cell_magic("agent", "-a helper --session s", "a message")):
        with pytest.raises(UsageError, match="-a and --session"):
            run()


def test_an_empty_run_log_says_why(shell: InteractiveShell, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # a store is configured (the fixture) but nothing ran yet: no file, nothing logged
    log = shell.run_line_magic("agent_log", "")
    assert repr(log) == "RunLog(no runs logged)" and log._repr_html_() == '<p class="mm-runlog">no runs logged</p>'
    ChatAgent(model=ScriptedModel(["fine"]), name="py").chat("from python")
    filtered = shell.run_line_magic("agent_log", "--status error")
    assert "no runs match in" in filtered._repr_html_() and "store.sqlite" in filtered._repr_html_()
    assert "run log is off" not in repr(filtered)
    # no store configured in this kernel: runs are not logged, and the empty log says how to turn it on
    shell.run_line_magic("config", "AgentMagics.store = None")
    monkeypatch.setattr("menglong_magic.ipython.history_magic.default_store_path", lambda: tmp_path / "none.sqlite")
    off = shell.run_line_magic("agent_log", "")
    assert "run log is off in this kernel" in repr(off) and "%config AgentMagics.store" in off._repr_html_()
    # an old store at the default path, but the log is off now: its rows show; an empty answer still says why
    monkeypatch.setattr("menglong_magic.ipython.history_magic.default_store_path", lambda: tmp_path / "store.sqlite")
    assert [row["task"] for row in shell.run_line_magic("agent_log", "")] == ["from python"]
    assert "run log is off" in repr(shell.run_line_magic("agent_log", "--model nosuch"))
