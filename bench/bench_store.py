"""Saved sessions (issue #29): the cost of persisting a turn, and of loading a 10,000-turn session.

Run: python bench/bench_store.py   (targets: persisting a turn < 2 ms median; loading 10,000 turns < 200 ms)

A turn here is a tool round and an answer (user, assistant with a tool call, tool result, assistant: 4 messages)
plus its run-log row (settings summary, the tool call with its arguments and result, usage), written in one
transaction to a WAL-mode SQLite file — what ``ChatAgent(session=...)`` does at the end of every turn.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from menglong_magic import ChatAgent, tool
from menglong_magic.models import ScriptedModel, call, calls, reply
from menglong_magic.store import AgentPersistence, Store

TURNS = 500
LOADED = 10_000
LOADS = 7


@tool
def lookup(city: str) -> str:
    """Facts about a city."""
    return f"{city} has about 2.1 million inhabitants and is the capital of its country. " * 3


def scripted(n: int) -> ScriptedModel:
    steps = []
    for i in range(n):
        steps += [calls(call("lookup", {"city": f"City {i}"})), reply(f"City {i} is a big capital city, answer {i}.")]
    return ScriptedModel(steps)


def persist_cost(directory: Path) -> tuple[float, float, float]:
    """(median ms of persisting one turn, median ms of a whole turn with a session, without one).

    The two agents take turns (one with a session, one without), so the machine's load hits both alike."""
    store = Store(directory / "persist.sqlite")
    agent = ChatAgent(model=scripted(TURNS), tools=[lookup], mode="auto", session="bench", store=store)
    plain = ChatAgent(model=scripted(TURNS), tools=[lookup], mode="auto")
    copy = AgentPersistence("copy", store)  # the end-of-turn work again, alone, into another session
    settings = agent.settings()
    persist, with_session, without = [], [], []
    for i in range(TURNS):
        t = time.perf_counter()
        result = agent.run(f"Tell me about City {i}.")
        with_session.append(time.perf_counter() - t)
        t = time.perf_counter()
        plain.run(f"Tell me about City {i}.")
        without.append(time.perf_counter() - t)
        t = time.perf_counter()
        copy.finished(result, settings, kind="run", agent=agent.name, committed=True)
        persist.append(time.perf_counter() - t)
    assert len(store.turns("bench")) == len(store.turns("copy")) == TURNS
    assert len(store.load("bench")) == 4 * TURNS
    store.close()
    return (statistics.median(persist) * 1000, statistics.median(with_session) * 1000,
            statistics.median(without) * 1000)


def load_cost(directory: Path) -> tuple[float, float, float, int]:
    """(median ms of Store.load, wall and CPU; median ms of ChatAgent(session=...) on a fresh connection;
    messages loaded)."""
    path = directory / "load.sqlite"
    with Store(path) as store:
        now = time.time()
        store.save([("big", "turn", f"run{i}", [
            {"role": "user", "content": f"Question number {i}: what is the population of city {i}?"},
            {"role": "assistant", "content": f"City {i} has about {i * 1000} inhabitants, as far as I know."},
        ], now) for i in range(LOADED)])
    loads, cpu, agents, count = [], [], [], 0
    for _ in range(LOADS):
        with Store(path) as store:  # a new process's view: a fresh connection each time
            t, c = time.perf_counter(), time.process_time()
            count = len(store.load("big"))
            loads.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        fresh = Store(path)
        t = time.perf_counter()
        agent = ChatAgent(model="offline", session="big", store=fresh)
        agents.append(time.perf_counter() - t)
        assert len(agent.messages) == 2 * LOADED
        fresh.close()
    return statistics.median(loads) * 1000, statistics.median(cpu) * 1000, statistics.median(agents) * 1000, count


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        persist, with_session, without = persist_cost(Path(tmp))
        load, load_cpu, agent, count = load_cost(Path(tmp))
    print(f"persisting a turn (4 messages + its run-log row, one transaction), median of {TURNS}: "
          f"{persist:.3f} ms (target < 2 ms)")
    print(f"a whole scripted tool turn (in-process model, sync tool), median of {TURNS}, alternating: "
          f"{with_session:.3f} ms with a session, {without:.3f} ms without")
    print(f"loading a {LOADED:,}-turn session ({count:,} messages), median of {LOADS}: Store.load {load:.1f} ms "
          f"({load_cpu:.1f} ms CPU), "
          f"ChatAgent(session=...) {agent:.1f} ms (target < 200 ms)")


if __name__ == "__main__":
    main()
