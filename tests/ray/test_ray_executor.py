"""Maps on a local Ray with 2 workers: same results as the local executor, a worker killed mid-run, secrets.

The real ``openai`` client runs inside the Ray workers and talks over HTTP to the scripted server on
127.0.0.1, which only accepts the planted key: a worker that did not get the key from its environment fails.
"""

from __future__ import annotations

import asyncio
import os
import pickle
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")

from menglong_magic import ChatAgent, ChatMode  # noqa: E402
from menglong_magic.events import BatchItemFinished  # noqa: E402
from menglong_magic.maps.ray import (  # noqa: E402
    AgentSpec,
    RayExecutor,
    RayExecutorError,
    _stop_owned_ray,
    ensure_ray,
    local_ray_running,
)
from menglong_magic.maps.run import Journal  # noqa: E402
from menglong_magic.models import OpenAIModel  # noqa: E402
from menglong_magic.testing.server import ScriptedOpenAIServer, call_tools, fault, reply, tool_call  # noqa: E402

pytestmark = pytest.mark.ray

SECRET = "sk-planted-ray-secret-5f1c9a7e"


@pytest.fixture(scope="module")
def ray_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A local Ray (2 CPUs, no dashboard) started by the executor's own code, with the key in its environment;
    stopped after the module."""
    if ray.is_initialized():
        pytest.skip("a Ray is already initialised in this process")
    temp = tmp_path_factory.mktemp("ray")
    saved = os.environ.get("OPENAI_API_KEY")
    os.environ["OPENAI_API_KEY"] = SECRET  # what a user's kernel has; Ray's processes inherit it at start
    try:
        assert ensure_ray(num_cpus=2, temp_dir=str(temp)) is True
    finally:
        if saved is None:
            os.environ.pop("OPENAI_API_KEY", None)
        else:
            os.environ["OPENAI_API_KEY"] = saved
    try:
        yield temp
    finally:
        _stop_owned_ray()
        assert not ray.is_initialized()


@pytest.fixture
def key_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)


def shout(text: str) -> str:
    """Upper-case a text.

    Args:
        text: The text.
    """
    return text.upper()


def tool_responder(body: dict[str, Any]) -> Any:
    """Call ``shout`` with the user's message, then answer with the tool's result (by content, any order)."""
    last = body["messages"][-1]
    if last.get("role") == "user":
        return call_tools(tool_call("shout", {"text": last["content"]}))
    return reply(f"done: {last['content']}")


def slow_echo(body: dict[str, Any]) -> Any:
    user = [m for m in body["messages"] if m.get("role") == "user"][-1]["content"]
    if user == "leak":  # a careless server quoting the request headers (Authorization included) in its error
        return fault(400, echo_headers=True)
    return reply(f"echo: {user}", delay=0.03)


def user_prompts(server: ScriptedOpenAIServer) -> Counter[str]:
    return Counter(next(m["content"] for m in body["messages"] if m.get("role") == "user")
                   for body in server.requests if body["messages"][-1].get("role") == "user")


async def test_200_items_same_results_as_local(ray_dir: Path, key_in_env: None, tmp_path: Path) -> None:
    with ScriptedOpenAIServer(responder=tool_responder, require_authorization=f"Bearer {SECRET}") as server:
        agent = ChatAgent(model=OpenAIModel("gpt-4o-mini", base_url=server.base_url), mode=ChatMode.AUTO,
                          tools=[shout], system="Use the tool.")
        items = [f"item {i}" for i in range(200)]
        local = await agent.map_async(items, journal=tmp_path / "local.sqlite")
        assert local.ok == 200 and len(server.requests) == 400
        server.reset_stats()

        executor = RayExecutor(num_workers=2, shard_size=16)
        remote = await agent.map_async(items, journal=tmp_path / "ray.sqlite", executor=executor)
        assert remote.ok == 200, remote.errors
        assert list(remote) == list(local) == [f"done: ITEM {i}" for i in range(200)]
        assert len(remote.usage.requests) == len(local.usage.requests) == 400
        assert len(server.requests) == 400  # each item's two requests, once
        assert set(server.authorization_schemes) == {"Bearer"}
        with Journal(tmp_path / "ray.sqlite") as ray_journal, Journal(tmp_path / "local.sqlite") as local_journal:
            assert {r["key"]: r["output"] for r in ray_journal.rows()} == {
                r["key"]: r["output"] for r in local_journal.rows()}

        # a second run with the same journal requests nothing; the workers were kept for the same spec
        server.reset_stats()
        again = await agent.map_async(items, journal=tmp_path / "ray.sqlite", executor=executor)
        assert list(again) == list(local) and again.restored == 200 and len(server.requests) == 0
        executor.close()
        assert local_ray_running()  # close() leaves a Ray this executor did not start


async def test_worker_killed_mid_run_nothing_lost_nor_repeated(ray_dir: Path, key_in_env: None,
                                                              tmp_path: Path) -> None:
    with ScriptedOpenAIServer(responder=slow_echo) as server:
        agent = ChatAgent(model=OpenAIModel("gpt-4o-mini", base_url=server.base_url))
        items = [f"row {i}" for i in range(200)]
        executor = RayExecutor(num_workers=2, shard_size=10, max_concurrency_per_worker=4)
        reported: set[int] = set()
        killed_after: set[int] = set()

        def on_event(event: Any) -> None:
            if isinstance(event, BatchItemFinished) and event.status == "ok":
                reported.add(event.index)

        task = asyncio.ensure_future(agent.map_async(items, journal=tmp_path / "j.sqlite", executor=executor,
                                                     on_event=on_event))
        while len(reported) < 40:
            assert not task.done(), task
            await asyncio.sleep(0.01)
        killed_after.update(reported)
        victim = executor.workers[0]
        ray.kill(victim, no_restart=True)
        result = await asyncio.wait_for(task, 300)

        assert result.ok == 200, result.errors
        assert list(result) == [f"echo: row {i}" for i in range(200)]  # complete and in input order
        assert executor.worker_failures >= 1 and executor.requeued >= 1
        counts = user_prompts(server)
        assert set(counts) == set(items)
        assert all(counts[f"row {i}"] == 1 for i in killed_after)  # reported before the kill: never again
        repeated = sum(c - 1 for c in counts.values())
        assert max(counts.values()) <= 2
        assert repeated <= executor.requeued  # only items the dead worker had not reported
        with Journal(tmp_path / "j.sqlite") as journal:
            assert len(journal) == 200
        executor.close()


async def test_secrets_absent_from_task_arguments_and_ray_logs(ray_dir: Path, key_in_env: None) -> None:
    with ScriptedOpenAIServer(responder=slow_echo, require_authorization=f"Bearer {SECRET}") as server:
        agent = ChatAgent(model=OpenAIModel("gpt-4o-mini", base_url=server.base_url))
        executor = RayExecutor(num_workers=2, shard_size=5)
        executor.record_sent = True
        result = await agent.map_async([*(f"q {i}" for i in range(20)), "leak"], executor=executor)
        executor.close()
    # the key reached the server from the workers' own environment (the server accepts only that key)
    assert result.ok == 20 and 20 in result.errors, result.errors
    assert SECRET not in str(result.errors[20]) and "Bearer ***" in str(result.errors[20])  # echoed, redacted
    assert any(kind == "shard" for kind, *_ in executor.sent)
    assert executor.sent[0][0] == "actor"
    for entry in executor.sent:  # what went to Ray: the pickled spec and the shards' (key, prompt) lists
        assert SECRET.encode() not in pickle.dumps(entry)
        assert SECRET.encode() not in (entry[1] if entry[0] == "actor" else b"")
    spec, secrets = AgentSpec.of(agent.settings(), "auto", agent_class=type(agent))
    assert spec.model.api_key_env == "OPENAI_API_KEY" and secrets == {"OPENAI_API_KEY": SECRET}
    assert SECRET not in repr(spec)

    await asyncio.sleep(1.5)  # let Ray flush its logs
    searched, leaking = files_containing(ray_dir, SECRET.encode())
    assert any("worker" in name for name in searched)  # the workers' own logs are among what was searched
    assert any("runtime_env" in name for name in searched)
    assert leaking == []


def files_containing(root: Path, needle: bytes) -> tuple[list[str], list[str]]:
    """(every regular file under root, those containing needle)."""
    searched, leaking = [], []
    for path in root.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        searched.append(path.name)
        try:
            if needle in path.read_bytes():
                leaking.append(str(path))
        except OSError:
            continue
    return searched, leaking


async def test_models_that_cannot_travel_are_refused_before_ray_is_used(key_in_env: None) -> None:
    from menglong_magic.models.scripted import ScriptedModel

    agent = ChatAgent(model=ScriptedModel([]))
    with pytest.raises(RayExecutorError, match="ScriptedModel cannot run on Ray workers"):
        await agent.map_async(["a"], executor=RayExecutor(num_workers=1))
    with pytest.raises(ValueError, match="logged by Ray"):
        RayExecutor(runtime_env={"env_vars": {"OPENAI_API_KEY": SECRET}})
