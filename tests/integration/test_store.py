"""Issue #29: saved sessions and the run log, over real HTTP to the scripted server, in real SQLite files."""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
import sys
import textwrap
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from menglong_magic import ChatAgent, tool
from menglong_magic.models import OpenAIModel, RetryPolicy
from menglong_magic.store import MIGRATIONS, SCHEMA_VERSION, Store, StoreError, open_store, set_default_store
from menglong_magic.testing import ScriptedOpenAIServer, call_tools, echo_responder, reply, tool_call

FAST = RetryPolicy(max_attempts=1, base_delay=0.01, max_delay=0.05)


@pytest.fixture
def server() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer(responder=echo_responder()) as s:
        yield s


@pytest.fixture(autouse=True)
def _no_default_store(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("MENGLONG_STORE", raising=False)
    set_default_store(None)
    yield
    set_default_store(None)


def model(server: ScriptedOpenAIServer, **kwargs: Any) -> OpenAIModel:
    return OpenAIModel("scripted", base_url=server.base_url, api_key="unused-key-000", retry=FAST, **kwargs)


def store_bytes(path: Path) -> bytes:
    """The store file and its write-ahead log, as on disk."""
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())


# ------------------------------------------------------------------------------------------- sessions
def test_a_new_agent_with_the_session_name_continues_the_conversation(server: ScriptedOpenAIServer,
                                                                      tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    first = ChatAgent(model=model(server), session="analysis", store=path)
    for text in ("one", "two", "three"):
        assert first.chat(text) == f"echo: {text}"
    server.reset_stats()
    second = ChatAgent(model=model(server), session="analysis", store=path)
    assert second.messages == first.messages
    assert second.chat("four") == "echo: four"
    sent = server.requests[-1]["messages"]
    assert [m["content"] for m in sent] == ["one", "echo: one", "two", "echo: two", "three", "echo: three", "four"]
    # Another session, and no session at all, start empty.
    assert ChatAgent(model=model(server), session="other", store=path).messages == []
    assert ChatAgent(model=model(server), store=path).messages == []


@pytest.mark.parametrize("name", ["", "   ", 42])
def test_a_session_needs_a_name(name: Any) -> None:
    with pytest.raises(ValueError, match="non-empty name"):
        ChatAgent(model="offline", session=name)


def test_two_agents_continuing_one_session_are_told_once(server: ScriptedOpenAIServer, tmp_path: Path,
                                                         capfd: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.sqlite"
    first = ChatAgent(model=model(server), session="s", store=path)
    first.chat("a1")
    second = ChatAgent(model=model(server), session="s", store=path)  # sees a1
    second.chat("b1")
    assert capfd.readouterr().err == ""  # one after the other: nothing to say
    first.chat("a2")  # first does not know b1
    first.chat("a3")
    second.chat("b2")
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 2 and all("was also changed elsewhere" in line for line in lines), lines
    assert user_texts_of(open_store(path).load("s")) == ["a1", "b1", "a2", "a3", "b2"]  # nothing lost


def user_texts_of(messages: list[dict[str, Any]]) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "user"]


def test_tool_rounds_are_saved_whole_and_reload_identically(server: ScriptedOpenAIServer, tmp_path: Path) -> None:
    @tool
    def lookup(city: str) -> str:
        """Population of a city."""
        return f"{city}: 2.1 million"

    server.enqueue(call_tools(tool_call("lookup", {"city": "Paris"}), tool_call("lookup", {"city": "Rome"})),
                   reply("Paris and Rome are big."))
    path = tmp_path / "s.sqlite"
    agent = ChatAgent(model=model(server), tools=[lookup], mode="auto", session="cities", store=path)
    result = agent.run("How big are Paris and Rome?")
    assert result.stop_reason == "completed"
    again = ChatAgent(model=model(server), session="cities", store=path)
    assert again.messages == agent.messages
    assert [m["role"] for m in again.messages] == ["user", "assistant", "tool", "tool", "assistant"]
    turns = open_store(path).turns("cities")
    assert len(turns) == 1 and len(turns[0].messages) == 5  # one turn, one row


def test_a_failed_turn_saves_nothing_of_itself_and_the_history_stays_usable(server: ScriptedOpenAIServer,
                                                                           tmp_path: Path) -> None:
    from menglong_magic.testing import fault

    path = tmp_path / "s.sqlite"
    agent = ChatAgent(model=model(server), session="s", store=path)
    agent.chat("fine")
    server.enqueue(fault(500))
    result = agent.run("breaks", mode="normal")
    assert result.stop_reason == "error"
    assert ChatAgent(model=model(server), session="s", store=path).messages == agent.messages
    assert len(agent.messages) == 2
    log = open_store(path).runs(session="s")
    assert [r["stop_reason"] for r in log] == ["error", "completed"]


def test_reset_keeps_the_stored_turns_but_new_agents_start_after_it(server: ScriptedOpenAIServer,
                                                                    tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    agent = ChatAgent(model=model(server), session="s", store=path)
    agent.chat("before")
    assert agent.clear_context() is True  # the stored session was kept
    agent.chat("after")
    assert [m["content"] for m in ChatAgent(model=model(server), session="s", store=path).messages] == [
        "after", "echo: after"]
    kinds = [t.kind for t in open_store(path).turns("s")]
    assert kinds == ["turn", "reset", "turn"]
    assert ChatAgent(model=model(server), session="new", store=path).clear_context() is False  # nothing stored


def test_forks_and_batches_are_logged_but_not_saved_to_the_session(server: ScriptedOpenAIServer,
                                                                   tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    agent = ChatAgent(model=model(server), session="main", store=path)
    agent.chat("kept")
    agent.fork().chat("a what-if")
    agent.batch_chat(["b1", "b2"])
    agent.map(["m1", "m2"], "item {}")
    assert [m["content"] for m in ChatAgent(model=model(server), session="main", store=path).messages] == [
        "kept", "echo: kept"]
    rows = open_store(path).runs(limit=None)
    assert sorted(r["kind"] for r in rows) == ["batch_item"] * 4 + ["chat"] * 2
    assert sorted(r["task"] for r in rows) == ["a what-if", "b1", "b2", "item m1", "item m2", "kept"]
    fork_row = next(r for r in rows if r["task"] == "a what-if")
    assert fork_row["session"] is None


# ------------------------------------------------------------------------------------------- run log
def test_the_run_log_records_what_a_run_did(server: ScriptedOpenAIServer, tmp_path: Path) -> None:
    @tool
    def shout(text: str) -> str:
        """Upper-case a text."""
        return text.upper() * 500  # a long result: clipped in the log

    server.enqueue(call_tools(tool_call("shout", {"text": "hello"}), usage=(11, 3)), reply("HELLO", usage=(20, 2)))
    path = tmp_path / "log.sqlite"
    set_default_store(path)  # a configured store: the run log is on without a session
    agent = ChatAgent(model=model(server), tools=[shout], system="Be loud.", name="loud")
    result = agent.run("shout hello", max_iterations=4)
    log = open_store(path).runs()
    assert len(log) == 1
    row = log[0]
    assert row["task"] == "shout hello" and row["model"] == "scripted" and row["kind"] == "run"
    assert row["agent"] == "loud" and row["session"] is None and row["stop_reason"] == "completed"
    assert row["iterations"] == 2 and row["input_tokens"] == 31 and row["output_tokens"] == 5
    assert row["final_output"] == "HELLO"
    assert abs(row["duration"] - result.execution_time) < 1e-6 and row["started"] > 0
    timings = json.loads(row["timings"])
    assert [t["iteration"] for t in timings] == [1, 2] and all(t["duration"] > 0 for t in timings)
    settings = json.loads(row["settings"])
    assert settings["tools"] == ["shout"] and settings["max_iterations"] == 4 and settings["system"] == "Be loud."
    (call,) = json.loads(row["tool_calls"])
    assert call["name"] == "shout" and json.loads(call["arguments"]) == {"text": "hello"}
    assert call["status"] == "ok" and call["result"].startswith("HELLOHELLO")
    assert len(call["result"]) < 2100 and "more characters" in call["result"]
    frame = log.to_pandas()
    assert list(frame["task"]) == ["shout hello"] and str(frame["started"].dtype).startswith("datetime64")
    assert "shout hello" in repr(log) and "<table" in log._repr_html_()


def test_the_run_log_filters(server: ScriptedOpenAIServer, tmp_path: Path) -> None:
    from menglong_magic.testing import fault

    path = tmp_path / "log.sqlite"
    a = ChatAgent(model=model(server), session="a", store=path)
    b = ChatAgent(model=OpenAIModel("other-model", base_url=server.base_url, api_key="unused-key-000", retry=FAST),
                  session="b", store=path)
    a.chat("a1")
    b.chat("b1")
    server.enqueue(fault(500))
    a.run("a2", mode="normal")
    store = open_store(path)
    assert [r["task"] for r in store.runs(session="a")] == ["a2", "a1"]
    assert [r["task"] for r in store.runs(model="other-model")] == ["b1"]
    assert [r["task"] for r in store.runs(status="error")] == ["a2"]
    assert sorted(r["task"] for r in store.runs(status="ok")) == ["a1", "b1"]
    assert len(store.runs(since="2000-01-01")) == 3 and len(store.runs(until="2000-01-01")) == 0
    assert len(store.runs(limit=2)) == 2


# ------------------------------------------------------------------------------------------- secrets
KEY = "tok-STOREKEY-5a6b7c8d9e"
HEADER = "hdr-STOREHDR-1f2e3d4c5b"
BASIC_PASSWORD = "pw-STOREBASIC-0a9b8c7d6e"


def encodings(secret: str) -> set[str]:
    return {
        secret, f"Bearer {secret}", urllib.parse.quote(secret), urllib.parse.quote(secret, safe=""),
        json.dumps(secret)[1:-1],
        base64.b64encode(f":{secret}".encode()).decode(), base64.b64encode(f"user:{secret}".encode()).decode(),
        base64.b64encode(secret.encode()).decode().rstrip("="), secret[: len(secret) // 2 + 2],
    }


def test_no_secret_reaches_the_store_file_in_any_encoding(server: ScriptedOpenAIServer, tmp_path: Path) -> None:
    b64 = base64.b64encode(f"user:{KEY}".encode()).decode()

    @tool
    def fetch(url: str, token: str) -> str:
        """Fetch a URL with a token."""
        return (f"fetched {url} with {token}; header {HEADER}; basic {b64}; quoted {urllib.parse.quote(KEY, safe='')}; "
                f"password {BASIC_PASSWORD}")

    server.enqueue(call_tools(tool_call("fetch", {"url": f"https://user:{KEY}@example.org/x", "token": KEY})),
                   reply(f"the key was {KEY} and the header {HEADER}"))
    path = tmp_path / "secret.sqlite"
    basic = base64.b64encode(f"user:{BASIC_PASSWORD}".encode()).decode()
    basic_model = OpenAIModel("scripted", base_url=server.base_url, retry=FAST,
                              default_headers={"Authorization": f"Basic {basic}"})
    agent = ChatAgent(model=OpenAIModel("scripted", base_url=server.base_url, api_key=KEY, retry=FAST,
                                        default_headers={"X-Custom": HEADER}),
                      tools=[fetch], mode="auto", session="s", store=path)
    result = agent.run(f"use token {KEY} and {HEADER}")
    assert result.stop_reason == "completed" and result.tool_calls[0].result is not None
    agent.model = basic_model  # Basic auth in place of the key; its password is planted in this turn too
    assert agent.chat(f"my password is {BASIC_PASSWORD}").startswith("echo: my password is")
    agent.clear_context()
    data = store_bytes(path)
    assert b"fetched" in data and b"example.org" in data  # the turn was stored (redacted), not skipped
    for secret in (KEY, HEADER, BASIC_PASSWORD):
        for form in encodings(secret):
            assert form.encode() not in data, form
    export = open_store(path).export("s", tmp_path / "s.json")
    assert "my password is ***" in export
    for secret in (KEY, HEADER, BASIC_PASSWORD):
        assert not any(form in export for form in encodings(secret))


# ------------------------------------------------------------------------------------------- export / import / forget
def test_export_json_round_trips_and_markdown_reads(server: ScriptedOpenAIServer, tmp_path: Path) -> None:
    @tool
    def add(a: int, b: int) -> int:
        """Add."""
        return a + b

    server.enqueue(call_tools(tool_call("add", {"a": 2, "b": 3})), reply("It is **5**."))
    path = tmp_path / "s.sqlite"
    agent = ChatAgent(model=model(server), tools=[add], mode="auto", session="math", store=path)
    agent.run("2+3?")
    agent.chat("thanks, ünïcödé ✓", mode="normal")
    store = open_store(path)
    store.export("math", tmp_path / "math.json", "json")
    store.export("math", tmp_path / "math.md", "md")
    other = Store(tmp_path / "other.sqlite")
    assert other.import_json(tmp_path / "math.json", "copy") == "copy"
    assert other.load("copy") == agent.messages
    assert [t.messages for t in other.turns("copy")] == [t.messages for t in store.turns("math")]
    with pytest.raises(StoreError, match="exists already"):
        other.import_json(tmp_path / "math.json", "copy")
    md = (tmp_path / "math.md").read_text(encoding="utf-8")
    assert "# Session math" in md and "`add`" in md and "It is **5**." in md and "ünïcödé ✓" in md
    other.close()


def test_forget_deletes_the_session_and_optionally_its_runs(server: ScriptedOpenAIServer, tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    ChatAgent(model=model(server), session="gone", store=path).chat("remember-me-xyzzy")
    ChatAgent(model=model(server), session="stays", store=path).chat("keep")
    store = open_store(path)
    assert store.forget("gone") == (1, 0)
    assert not store.has_session("gone") and store.has_session("stays")
    assert [r["task"] for r in store.runs(session="gone")] == ["remember-me-xyzzy"]
    assert store.forget("gone", runs=True) == (0, 1)
    assert b"remember-me-xyzzy" not in store_bytes(path)  # secure_delete + checkpoint: not in free pages either
    assert ChatAgent(model=model(server), session="gone", store=path).messages == []


# ------------------------------------------------------------------------------------------- faults
def test_a_locked_store_is_one_line_and_the_turns_are_written_later(server: ScriptedOpenAIServer, tmp_path: Path,
                                                                    capfd: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.sqlite"
    store = Store(path, timeout=0.2)
    agent = ChatAgent(model=model(server), session="s", store=store)
    agent.chat("one")
    blocker = sqlite3.connect(str(path), isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        assert agent.chat("two") == "echo: two"  # the run works in memory
        assert agent.chat("three") == "echo: three"
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "locked" in lines[0] and "continues in memory" in lines[0], err
    assert [m["content"] for m in store.load("s")] == ["one", "echo: one"]  # nothing committed was lost
    agent.chat("four")  # the store is free again: the turns kept in memory are written first, in order
    assert [m["content"] for m in store.load("s") if m["role"] == "user"] == ["one", "two", "three", "four"]
    assert len(store.runs(session="s")) == 4
    store.close()


@pytest.mark.parametrize("garbage", [b"this is not a database at all" * 100, b"SQLite format 3\x00" + b"\xff" * 4000])
def test_a_corrupt_store_is_one_line_and_the_agent_works_in_memory(server: ScriptedOpenAIServer, tmp_path: Path,
                                                                   capfd: pytest.CaptureFixture[str],
                                                                   garbage: bytes) -> None:
    path = tmp_path / "broken.sqlite"
    path.write_bytes(garbage)
    agent = ChatAgent(model=model(server), session="s", store=path)
    assert agent.messages == []
    assert agent.chat("still works") == "echo: still works"
    assert agent.chat("and again") == "echo: and again"
    assert len(agent.messages) == 4
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and str(path) in lines[0] and "move or delete it" in lines[0], lines
    assert path.read_bytes() == garbage  # not "repaired" over the user's file
    with pytest.raises(StoreError) as info:
        Store(path)
    assert "\n" not in str(info.value)


def test_schema_is_versioned_and_migrated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.sqlite"
    with Store(path) as store:
        store.save_turn("s", [{"role": "user", "content": "old"}])
    assert sqlite3.connect(str(path)).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION

    def add_tags(db: sqlite3.Connection) -> None:
        db.execute("ALTER TABLE sessions ADD COLUMN tags TEXT")

    monkeypatch.setitem(MIGRATIONS, SCHEMA_VERSION + 1, add_tags)
    monkeypatch.setattr("menglong_magic.store.SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with Store(path) as store:  # the next version's migration runs once, keeping the data
        assert store.load("s") == [{"role": "user", "content": "old"}]
    db = sqlite3.connect(str(path))
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    assert "tags" in [row[1] for row in db.execute("PRAGMA table_info(sessions)")]
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer"):
        Store(path)


def test_two_processes_writing_one_store_lose_and_mix_nothing(server: ScriptedOpenAIServer, tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    script = textwrap.dedent(f"""
        import sys
        from menglong_magic import ChatAgent
        from menglong_magic.models import OpenAIModel
        name = sys.argv[1]
        agent = ChatAgent(model=OpenAIModel("scripted", base_url={server.base_url!r}, api_key="unused-key-000"),
                          session=name, store={str(path)!r})
        for i in range(50):
            agent.chat(f"{{name}}-{{i}}")
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, name], stderr=subprocess.PIPE, text=True)
             for name in ("left", "right")]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert "menglong_magic:" not in err, err
    store = open_store(path)
    for name in ("left", "right"):
        users = [m["content"] for m in store.load(name) if m["role"] == "user"]
        assert users == [f"{name}-{i}" for i in range(50)]
        assert [t.seq for t in store.turns(name)] == list(range(1, 51))
        assert len(store.runs(session=name, limit=None)) == 50


def test_sigkill_while_writing_leaves_only_whole_turns(tmp_path: Path) -> None:
    """A process killed at a random moment of a stream of tool turns: every stored turn is complete."""
    path = tmp_path / "killed.sqlite"
    script = textwrap.dedent(f"""
        from menglong_magic import ChatAgent, tool
        from menglong_magic.models import ScriptedModel, call, calls, reply

        @tool
        def note(text: str) -> str:
            '''Take a note.'''
            return "noted: " + text * 50

        steps = []
        for i in range(100000):
            steps += [calls(call("note", {{"text": f"n{{i}}"}})), reply(f"done {{i}}")]
        agent = ChatAgent(model=ScriptedModel(steps), tools=[note], mode="auto", session="s", store={str(path)!r})
        for i in range(100000):
            agent.run(f"turn {{i}}")
            if i == 20:
                print("running", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "running"
    time.sleep(0.3)
    proc.kill()  # SIGKILL, somewhere in a turn or in its commit
    proc.wait(timeout=30)
    db = sqlite3.connect(str(path))
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    store = Store(path)
    turns = store.turns("s")
    assert len(turns) > 20
    for index, turn in enumerate(turns):
        assert [m["role"] for m in turn.messages] == ["user", "assistant", "tool", "assistant"]
        assert turn.messages[0]["content"] == f"turn {index}" and turn.messages[3]["content"] == f"done {index}"
    assert len(store.runs(session="s", limit=None)) == len(turns)
    store.close()


def test_a_store_file_deleted_while_in_use_is_created_anew(server: ScriptedOpenAIServer, tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    agent = ChatAgent(model=model(server), session="s", store=path)
    agent.chat("before")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    agent.chat("after")  # written to a new file at the path, not to the deleted one
    assert path.exists()
    assert [m["content"] for m in Store(path).load("s")] == ["after", "echo: after"]
