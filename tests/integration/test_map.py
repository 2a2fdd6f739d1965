"""agent.map_async over real HTTP against the scripted loopback server: order, isolation, errors,
DataFrame input, the journal (including a SIGKILLed run), deduplication and the adaptive limiter."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

from menglong_magic import ChatAgent, tool
from menglong_magic import events as ev
from menglong_magic.agent.limiter import AdaptiveLimiter
from menglong_magic.maps.run import Journal, JournalUnavailableWarning, MapItemsRestored
from menglong_magic.models import OpenAIModel, RetryPolicy
from menglong_magic.testing import ScriptedOpenAIServer, call_tools, fault, free_port, reply, tool_call
from menglong_magic.testing.stall import StallMonitor

FAST_RETRY = RetryPolicy(max_attempts=6, base_delay=0.01, max_delay=0.2)


def make_agent(server: Any, **kw: Any) -> ChatAgent:
    return ChatAgent(model=OpenAIModel("m", base_url=server.base_url, api_key="sk-map", retry=FAST_RETRY), **kw)


def last_user(body: dict[str, Any]) -> str:
    return [m for m in body["messages"] if m["role"] == "user"][-1]["content"]


def echo_with_delays(body: dict[str, Any]) -> Any:
    """Later items answer sooner, so completion order is the reverse of input order."""
    text = last_user(body)
    number = int(text.rsplit(" ", 1)[-1]) if text.rsplit(" ", 1)[-1].isdigit() else 0
    return reply(f"echo: {text}", delay=max(0.0, 0.2 - 0.01 * number))


async def test_outputs_in_input_order_and_items_isolated(openai_server: ScriptedOpenAIServer) -> None:
    openai_server.responder = echo_with_delays
    agent = make_agent(openai_server, system="be brief")
    agent.messages.append({"role": "user", "content": "an earlier chat turn"})
    finished: list[int] = []
    result = await agent.map_async([f"item {i}" for i in range(15)],
                                   on_event=lambda e: finished.append(e.index)
                                   if isinstance(e, ev.BatchItemFinished) else None)
    assert list(result) == [f"echo: item {i}" for i in range(15)]
    assert finished != sorted(finished)  # they did finish out of order
    assert len(result) == 15 and result.errors == {} and result.requested == 15
    for body in openai_server.requests:  # each item alone: system prompt + its own message, no chat history
        assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert agent.messages == [{"role": "user", "content": "an earlier chat turn"}]
    assert result.usage.request_count == 15 and result.usage.total_tokens is not None


async def test_per_item_errors_do_not_stop_the_others(openai_server: ScriptedOpenAIServer) -> None:
    def respond(body: dict[str, Any]) -> Any:
        text = last_user(body)
        return fault(400, message="bad item") if text.startswith("bad") else reply(text.upper())

    openai_server.responder = respond
    agent = make_agent(openai_server)
    result = await agent.map_async(["a", "bad 1", "b", "bad 2"])
    assert result[0] == "A" and result[2] == "B"
    assert set(result.errors) == {1, 3}
    assert isinstance(result[1], Exception) and "bad item" in str(result[1])
    frame = result.to_pandas()
    assert frame["error"].notna().tolist() == [False, True, False, True]
    with pytest.raises(Exception, match="bad item"):
        await agent.map_async(["bad 3", "c"], return_exceptions=False)


async def test_dataframe_and_series_inputs(openai_server: ScriptedOpenAIServer) -> None:
    pd = pytest.importorskip("pandas")
    openai_server.responder = lambda body: reply(f"label for <{last_user(body)}>")
    agent = make_agent(openai_server)
    frame = pd.DataFrame({"text": ["great", "awful"], "stars": [5, 1]}, index=["r1", "r2"])
    result = await agent.map_async(frame, "Review ({stars} stars): {text}")
    assert list(result) == ["label for <Review (5 stars): great>", "label for <Review (1 stars): awful>"]
    out = result.to_pandas()
    assert list(out.index) == ["r1", "r2"]
    assert frame.join(out)["output"].tolist() == list(result)
    series = await agent.map_async(frame["text"], "Sentiment of: {text}")
    assert list(series) == ["label for <Sentiment of: great>", "label for <Sentiment of: awful>"]
    dicts = await agent.map_async([{"text": "ok"}], "Say {text}")
    assert dicts[0] == "label for <Say ok>"
    with pytest.raises(KeyError, match="nope"):
        await agent.map_async([{"text": "ok"}], "Say {nope}")


async def test_identical_prompts_are_requested_once(openai_server: ScriptedOpenAIServer) -> None:
    openai_server.responder = lambda body: reply(f"echo: {last_user(body)}", delay=0.02)
    agent = make_agent(openai_server)
    items = ["x", "y", "x", "z", "y", "x"]
    result = await agent.map_async(items)
    assert list(result) == [f"echo: {i}" for i in items]
    assert len(openai_server.requests) == 3 and result.requested == 3 and result.deduplicated == 3


async def test_journal_requests_only_missing_items(openai_server: ScriptedOpenAIServer, tmp_path: Path) -> None:
    openai_server.responder = lambda body: reply(f"echo: {last_user(body)}")
    agent = make_agent(openai_server)
    journal = tmp_path / "runs.sqlite"
    first = await agent.map_async([f"q{i}" for i in range(10)], journal=journal)
    assert first.requested == 10
    openai_server.reset_stats()
    events: list[ev.Event] = []
    again = await agent.map_async([f"q{i}" for i in range(12)], journal=journal, on_event=events.append)
    assert sorted(last_user(b) for b in openai_server.requests) == ["q10", "q11"]
    assert list(again) == [f"echo: q{i}" for i in range(12)]
    assert again.restored == 10 and again.cached[:10] == [True] * 10 and not again.cached[10]
    assert any(isinstance(e, MapItemsRestored) and e.count == 10 for e in events)
    # What determines the answer is in the key: another system prompt asks again.
    openai_server.reset_stats()
    await agent.map_async([f"q{i}" for i in range(3)], journal=journal, system="terse")
    assert len(openai_server.requests) == 3


async def test_failed_items_are_asked_again(openai_server: ScriptedOpenAIServer, tmp_path: Path) -> None:
    openai_server.enqueue(fault(400, message="no"))
    openai_server.responder = lambda body: reply("fine")
    agent = make_agent(openai_server)
    journal = tmp_path / "j.sqlite"
    first = await agent.map_async(["only"], journal=journal)
    assert set(first.errors) == {0}
    second = await agent.map_async(["only"], journal=journal)
    assert list(second) == ["fine"] and len(openai_server.requests) == 2


async def test_items_use_the_agents_tools(openai_server: ScriptedOpenAIServer) -> None:
    seen: list[str] = []

    @tool
    def lookup(word: str) -> str:
        """Look a word up."""
        seen.append(word)
        return f"{word}!"

    def respond(body: dict[str, Any]) -> Any:
        last = body["messages"][-1]
        if last["role"] == "user":
            return call_tools(tool_call("lookup", {"word": last["content"]}))
        return reply(f"got {last['content']}")

    openai_server.responder = respond
    agent = make_agent(openai_server, mode="auto", tools=[lookup])
    result = await agent.map_async(["a", "b", "c"])
    assert list(result) == ["got a!", "got b!", "got c!"] and sorted(seen) == ["a", "b", "c"]


async def test_typed_outputs_and_their_journal(openai_server: ScriptedOpenAIServer, tmp_path: Path) -> None:
    pydantic = pytest.importorskip("pydantic")
    agent = make_agent(openai_server)
    if "output_type" not in __import__("inspect").signature(agent.settings).parameters:
        pytest.skip("typed results are not in this version")

    class Label(pydantic.BaseModel):
        sentiment: str

    openai_server.responder = lambda body: reply(json.dumps({"sentiment": last_user(body).split()[-1]}))
    journal = tmp_path / "typed.sqlite"
    result = await agent.map_async(["x positive", "y negative"], output_type=Label, journal=journal)
    assert result[0] == Label(sentiment="positive") and result[1] == Label(sentiment="negative")
    openai_server.reset_stats()
    again = await agent.map_async(["x positive", "y negative"], output_type=Label, journal=journal)
    assert list(again) == list(result) and openai_server.requests == []
    # Text answers of the same prompts are other items.
    await agent.map_async(["x positive"], journal=journal)
    assert len(openai_server.requests) == 1


async def test_fixed_bounds(openai_server: ScriptedOpenAIServer) -> None:
    openai_server.responder = lambda body: reply("ok", delay=0.03)
    agent = make_agent(openai_server)
    await agent.map_async([str(i) for i in range(20)], max_concurrency=3)
    assert openai_server.max_in_flight == 3
    openai_server.reset_stats()
    bounded = make_agent(openai_server, max_concurrency=2)  # the agent-wide bound stays
    await bounded.map_async([str(i) for i in range(10)])
    await bounded.batch_chat_async([str(i) for i in range(10)])
    assert openai_server.max_in_flight == 2


async def test_adaptive_limiter_against_a_rate_limited_server() -> None:
    with ScriptedOpenAIServer(responder=lambda body: reply("ok", delay=0.2), rate_limit=8,
                              rate_limit_retry_after=0.05) as server:
        agent = make_agent(server)
        result = await agent.map_async([f"r{i}" for i in range(200)])
        limiter = agent.limiter()
        assert isinstance(limiter, AdaptiveLimiter)
        assert result.errors == {} and list(result) == ["ok"] * 200
        assert server.rate_limited > 0 and limiter.decreases > 0
        # It starts wide open (one burst of 429s), then learns: a window near the server's 8, far below 1,000.
        assert server.rate_limited < 200, server.rate_limited
        assert limiter.limit <= 24, limiter
        # A later agent on the same endpoint (base URL + model) starts at the learned window: few rejections.
        server.reset_stats()
        later = make_agent(server)
        again = await later.map_async([f"s{i}" for i in range(200)])
        assert again.errors == {} and later.limiter().limit <= 24
        assert server.rate_limited < 30, server.rate_limited
        # The raw SDK at the same server, all at once, with its own retries: many items fail.
        import openai

        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-map", max_retries=2)
        raw = await asyncio.gather(*(client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": str(i)}]) for i in range(200)), return_exceptions=True)
        assert sum(isinstance(r, Exception) for r in raw) > 0
        await client.close()


FIRST_MAP_IN_A_NEW_PROCESS = """
import asyncio, json, platform, time
from menglong_magic import ChatAgent
from menglong_magic.models import OpenAIModel
from menglong_magic.testing import ScriptedOpenAIServer, reply

async def main():
    with ScriptedOpenAIServer(responder=lambda body: reply("ok", delay=0.05), rate_limit=8,
                              rate_limit_retry_after=0.05) as server:
        agent = ChatAgent(model=OpenAIModel("m", base_url=server.base_url, api_key="sk-first"))
        result = await agent.map_async([f"r{i}" for i in range(300)])
        print(json.dumps({"failed": len(result.errors), "rejected": server.rate_limited,
                          "peak": agent.limiter().peak_in_flight}))

# The first lookup of the platform in a process reads files (os-release); slow here, as on a busy machine.
real_platform = platform.platform
platform.platform = lambda *args, **kwargs: (time.sleep(0.3), real_platform(*args, **kwargs))[1]
asyncio.run(main())
"""


def test_the_first_map_of_a_new_process_is_paced_too() -> None:
    """The SDK looked the platform up in a worker thread during a new client's first request, and every request
    started meanwhile waited there holding its slot, then all went at once: in a fresh kernel, a first map sent its
    1,000 requests together (970 429s from a server that takes 20). In a fresh interpreter whose platform lookup
    takes 0.3 s, the first burst stays near the server's 8 (before: all 300 in flight, 300+ rejected)."""
    done = subprocess.run([sys.executable, "-c", FIRST_MAP_IN_A_NEW_PROCESS], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["failed"] == 0
    assert outcome["peak"] < 60 and outcome["rejected"] < 100, outcome  # not "everything at once"


async def test_batch_default_is_adaptive(openai_server: ScriptedOpenAIServer) -> None:
    # 200 ms answers: the batch starts its items one loop step apart, so on a loaded machine a short answer
    # could end before the ninth item is sent and the test would not see more than 8 in flight.
    openai_server.responder = lambda body: reply("ok", delay=0.2)
    agent = make_agent(openai_server)
    answers = await agent.batch_chat_async([str(i) for i in range(40)])
    assert answers == ["ok"] * 40
    assert openai_server.max_in_flight > 8  # no longer paced by the old fixed default of 8


async def test_batch_starts_its_items_one_loop_step_apart(openai_server: ScriptedOpenAIServer) -> None:
    # Another task on the loop (the panel, a Stop click, another cell) gets its turns while a big batch starts:
    # it sees the count of started items grow step by step, not jump from none to all in one loop iteration.
    openai_server.responder = lambda body: reply("ok", delay=0.05)
    agent = make_agent(openai_server)
    started: list[int] = []
    seen: set[int] = set()
    n = 100

    async def ticker() -> None:
        while len(started) < n:
            seen.add(len(started))
            await asyncio.sleep(0)

    watcher = asyncio.ensure_future(ticker())
    answers = await agent.batch_chat_async([str(i) for i in range(n)], on_event=lambda e: (
        started.append(e.index) if isinstance(e, ev.BatchItemStarted) else None))
    await watcher
    assert answers == ["ok"] * n and sorted(started) == list(range(n))
    assert len(seen) > n // 2, sorted(seen)  # all at once would show about two counts (0 and n)


CHILD = textwrap.dedent("""
    import asyncio, sys
    from menglong_magic import ChatAgent
    from menglong_magic.models import OpenAIModel
    base_url, journal, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    agent = ChatAgent(model=OpenAIModel("m", base_url=base_url, api_key="sk-child"))
    asyncio.run(agent.map_async([f"item {i}" for i in range(n)], journal=journal, max_concurrency=2))
    print("finished")
""")


def _journal_rows(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path) as db:
            return int(db.execute("SELECT COUNT(*) FROM items WHERE error IS NULL").fetchone()[0])
    except sqlite3.OperationalError:  # the table is not created yet
        return 0


def test_a_map_killed_with_sigkill_resumes_from_its_journal(tmp_path: Path) -> None:
    n = 40
    journal = tmp_path / "killed.sqlite"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    with ScriptedOpenAIServer(responder=lambda body: reply(f"answer to {last_user(body)}", delay=0.05)) as server:
        child = subprocess.Popen([sys.executable, str(script), server.base_url, str(journal), str(n)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ})
        try:
            deadline = time.monotonic() + 120
            while _journal_rows(journal) < n // 3:
                assert child.poll() is None, child.communicate()
                assert time.monotonic() < deadline, "the child made no progress"
                time.sleep(0.01)
            os.kill(child.pid, signal.SIGKILL)
        finally:
            if child.poll() is None:
                child.kill()
            child.wait(timeout=30)
        assert child.returncode == -signal.SIGKILL
        saved = _journal_rows(journal)
        assert n // 3 <= saved < n  # killed half way
        asked_before = len(server.requests)
        server.reset_stats()
        agent = ChatAgent(model=OpenAIModel("m", base_url=server.base_url, api_key="sk-parent"))
        result = asyncio.run(agent.map_async([f"item {i}" for i in range(n)], journal=journal))
        asked_again = sorted(last_user(b) for b in server.requests)
        assert len(asked_again) == n - saved  # only the items the journal lacks
        assert result.restored == saved and result.requested == n - saved
        assert list(result) == [f"answer to item {i}" for i in range(n)]
        assert _journal_rows(journal) == n
        assert asked_before >= saved


LOCKER = textwrap.dedent("""
    import sqlite3, sys, time
    db = sqlite3.connect(sys.argv[1], isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("BEGIN EXCLUSIVE")  # the write lock, as another map or a DB browser would hold it
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    db.execute("COMMIT")
    print("released", flush=True)
""")


def hold_write_lock(tmp_path: Path, journal: Path, seconds: float) -> subprocess.Popen[str]:
    """A second process holding the journal's SQLite write lock for ``seconds`` (returns once it holds it)."""
    script = tmp_path / "locker.py"
    script.write_text(LOCKER)
    locker = subprocess.Popen([sys.executable, str(script), str(journal), str(seconds)], stdout=subprocess.PIPE,
                              text=True)
    assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
    return locker


def committed(journal: Path) -> list[str]:
    with sqlite3.connect(journal) as db:
        return sorted(row[0] for row in db.execute("SELECT prompt FROM items WHERE error IS NULL"))


# A write that waited on the loop would stall it for at least one busy timeout (the old code: 5 s, then failed).
# The bounds leave room for the GIL noise of the in-process threaded server (the benchmark measures the real
# stall against a server in another process): a path (busy timeout 1 s) and a Journal object (3 s).
@pytest.mark.parametrize(("items", "busy_timeout", "stall_bound"), [(4, None, 0.9), (30, 3.0, 1.5)])
async def test_a_locked_journal_costs_no_answer_and_does_not_block_the_loop(
        tmp_path: Path, items: int, busy_timeout: float | None, stall_bound: float) -> None:
    path = tmp_path / "locked.sqlite"
    Journal(path).close()  # an existing journal, as a re-run would find it
    store = None if busy_timeout is None else Journal(path, busy_timeout=busy_timeout)
    journal: Path | Journal = path if store is None else store
    prompts = [f"item {i}" for i in range(items)]
    with ScriptedOpenAIServer(responder=lambda body: reply(f"answer to {last_user(body)}", delay=0.05)) as server:
        agent = make_agent(server)
        locker = hold_write_lock(tmp_path, path, 8.0)
        try:
            t = time.monotonic()
            with pytest.warns(JournalUnavailableWarning) as caught:
                async with StallMonitor() as stalls:
                    result = await agent.map_async(prompts, journal=journal)
            took = time.monotonic() - t
            assert locker.poll() is None, "the lock was released before the map ended: nothing was tested"
            assert list(result) == [f"answer to {p}" for p in prompts] and result.errors == {}
            journal_warnings = [str(w.message) for w in caught if w.category is JournalUnavailableWarning]
            assert len(journal_warnings) == 1, journal_warnings  # warned once
            assert "still locked" in journal_warnings[0] or "cannot be written" in journal_warnings[0]
            assert took < 7.5  # it did not wait for the lock
            assert stalls.longest < stall_bound, stalls.longest
            assert committed(path) == []  # still locked
            assert locker.wait(timeout=60) == 0
        finally:
            if locker.poll() is None:
                locker.kill()
        deadline = time.monotonic() + 30
        while committed(path) != sorted(prompts):  # the writer writes them once the lock is free
            assert time.monotonic() < deadline, committed(path)
            await asyncio.sleep(0.05)
        if store is not None:
            assert store.pending == 0 and store.last_error is None
            store.close()
        server.reset_stats()
        again = await make_agent(server).map_async(prompts, journal=path)
        assert again.restored == items and server.requests == []  # nothing asked twice


async def test_a_journal_locked_briefly_is_waited_for_without_warning(tmp_path: Path) -> None:
    journal = tmp_path / "brief.sqlite"
    Journal(journal).close()
    with ScriptedOpenAIServer(responder=lambda body: reply("ok", delay=0.02)) as server:
        locker = hold_write_lock(tmp_path, journal, 0.3)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", JournalUnavailableWarning)
                result = await make_agent(server).map_async([f"q{i}" for i in range(5)], journal=journal)
        finally:
            locker.wait(timeout=60)
        assert list(result) == ["ok"] * 5
        assert len(committed(journal)) == 5  # written before the map returned


async def test_a_refused_connection_narrows_the_window() -> None:
    port = free_port()  # a port with nobody listening: connections are refused
    agent = ChatAgent(model=OpenAIModel("m", base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-x",
                                        retry=RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.02)))
    result = await agent.map_async(["a", "b", "c"])
    limiter = agent.limiter()
    assert len(result.errors) == 3
    assert isinstance(limiter, AdaptiveLimiter) and limiter.congestion_signals >= 3 and limiter.limit < 10
