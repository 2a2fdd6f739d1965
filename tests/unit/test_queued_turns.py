"""The shared-agent server form: turns on one agent from several tasks queue (ordered) and say so once."""

from __future__ import annotations

import asyncio
import warnings

from menglong_magic import ChatAgent
from menglong_magic import events as ev
from menglong_magic.agent.turn import QueuedTurnWarning
from menglong_magic.models import OfflineModel


def _queued(caught: list[warnings.WarningMessage]) -> list[warnings.WarningMessage]:
    return [w for w in caught if issubclass(w.category, QueuedTurnWarning)]


async def test_concurrent_turns_on_one_agent_warn_once_naming_fork() -> None:
    agent = ChatAgent(model=OfflineModel(delay=0.01))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        waiting: list[ev.TurnWaiting] = []
        agent.subscribe(lambda e: waiting.append(e) if isinstance(e, ev.TurnWaiting) else None)
        results = await asyncio.gather(*(agent.arun(f"request {i}") for i in range(4)))
        assert [r.task for r in results] == [f"request {i}" for i in range(4)]
        assert len(waiting) == 3  # one at a time: the ordering is what the warning explains
        await asyncio.gather(*(agent.arun(f"again {i}") for i in range(3)))
    queued = _queued(caught)
    assert len(queued) == 1  # once per agent, however often turns queue later
    assert "fork()" in str(queued[0].message)
    # Each request saw only its own task and the earlier turns: nothing mixed.
    users = [m["content"] for m in agent.messages if m["role"] == "user"]
    assert users == [f"request {i}" for i in range(4)] + [f"again {i}" for i in range(3)]


async def test_fork_per_request_runs_concurrently_without_a_warning() -> None:
    agent = ChatAgent(model=OfflineModel(delay=0.01))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = await asyncio.gather(*(agent.fork().arun(f"request {i}") for i in range(5)))
    assert not _queued(caught)
    assert all(r.stop_reason == "completed" for r in results)
    assert agent.messages == []  # forks never write back


async def test_one_task_after_another_never_warns() -> None:
    agent = ChatAgent(model=OfflineModel())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(3):
            await agent.arun(f"turn {i}")
    assert not _queued(caught)
