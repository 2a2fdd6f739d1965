"""examples/fastapi_app.py under a real uvicorn on 127.0.0.1, with the model behind the loopback server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from menglong_magic.testing import free_port, tool_then_answer_responder

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def service(openai_server: Any) -> Iterator[str]:
    openai_server.responder = tool_then_answer_responder("word_count", {"text": "a b c"}, "three words", delay=0.2)
    port = free_port()
    env = {**os.environ, "OPENAI_BASE_URL": openai_server.base_url, "OPENAI_API_KEY": "sk-test",
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "examples.fastapi_app:app", "--host", "127.0.0.1",
                             "--port", str(port), "--log-level", "warning"], cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url + "/docs", timeout=1)
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("uvicorn did not start") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_twenty_concurrent_requests_run_concurrently(service: str, openai_server: Any) -> None:
    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(*(client.post(service + "/execute_task", json={"task": f"count {i}"})
                                          for i in range(20)))

    responses = asyncio.run(go())
    bodies = [r.json() for r in responses]
    assert all(b["success"] and b["iterations"] == 2 and b["output"] == "three words" for b in bodies)
    # Concurrency observed at the server, not by the clock (a loaded machine stretches any time bound): each
    # model call takes 200 ms, so requests handled one at a time would never overlap there.
    assert openai_server.max_in_flight > 5, openai_server.max_in_flight


def test_forked_requests_never_see_each_others_tasks(service: str, openai_server: Any) -> None:
    """10 concurrent requests on per-request forks: every model request carries only its own task."""

    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(*(client.post(service + "/execute_task", json={"task": f"task number {i}"})
                                          for i in range(10)))

    responses = asyncio.run(go())
    assert all(r.json()["success"] for r in responses)
    assert len(openai_server.requests) == 20  # two model calls per request
    foreign = []
    for body in openai_server.requests:
        users = [m["content"] for m in body["messages"] if m["role"] == "user"]
        foreign.append(len(users) - 1)
    print(f"foreign tasks per model request: {foreign}")
    assert foreign == [0] * 20
