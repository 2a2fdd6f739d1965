"""A minimal OpenAI-compatible chat server for benchmarks: a bare ASGI app on uvicorn (httptools, uvloop).

Independent of the package's scripted test server (a stdlib threaded server in the caller's process, whose
threads compete with the client for the GIL): run in its own process, it keeps up with thousands of
requests per second, so a benchmark measures the client, not the server.

Answers: when the request offers tools and the last message is the user's, a call of the first tool with
``{"key": <the user's text>}``; otherwise ``"answer: <last message's text>"``. ``stream: true`` gets SSE.
``--latency`` seconds are waited (without blocking) before each answer. ``--limit N``: beyond N requests in
flight, a 429 with ``Retry-After: --retry-after``. ``GET /stats`` (requests, 429s, peak in flight) and
``POST /reset`` for the benchmark.

Run: python bench/fast_openai_server.py --port 8765 [--latency 0.05] [--limit 20]   (uvicorn, httptools and uvloop
come with the dev extra; without the last two it falls back to asyncio and h11, slower)
Use from Python: ``with FastServer(latency=0.05) as server: server.base_url``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any


class App:
    def __init__(self, latency: float, limit: int | None, retry_after: float):
        self.latency, self.limit, self.retry_after = latency, limit, retry_after
        self.reset()

    def reset(self) -> None:
        self.requests = self.rate_limited = self.in_flight = self.peak = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path.endswith("/stats"):
            await self._json(send, 200, {"requests": self.requests, "rate_limited": self.rate_limited,
                                         "peak_in_flight": self.peak})
            return
        if path.endswith("/reset"):
            self.reset()
            await self._json(send, 200, {})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.requests += 1
        if self.limit is not None and self.in_flight >= self.limit:
            self.rate_limited += 1
            await self._json(send, 429, {"error": {"message": "too many requests in flight", "type": "rate_limit"}},
                             [(b"retry-after", str(self.retry_after).encode())])
            return
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            request = json.loads(body)
            if self.latency:
                await asyncio.sleep(self.latency)
            await self._answer(send, request)
        finally:
            self.in_flight -= 1

    async def _answer(self, send: Any, request: dict[str, Any]) -> None:
        last = request["messages"][-1]
        model = request.get("model", "m")
        usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        if request.get("tools") and last["role"] == "user":
            name = request["tools"][0]["function"]["name"]
            call = {"id": f"call_{self.requests}", "type": "function",
                    "function": {"name": name, "arguments": json.dumps({"key": last["content"]})}}
            message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [call]}
            finish = "tool_calls"
        else:
            message = {"role": "assistant", "content": f"answer: {last.get('content')}"}
            finish = "stop"
        if not request.get("stream"):
            await self._json(send, 200, {"id": "chatcmpl-1", "object": "chat.completion", "created": 0,
                                         "model": model, "usage": usage,
                                         "choices": [{"index": 0, "message": message, "finish_reason": finish}]})
            return
        delta = dict(message)
        if "tool_calls" in delta:
            delta["tool_calls"] = [{"index": 0, **c} for c in delta["tool_calls"]]
        chunks = [{"index": 0, "delta": delta, "finish_reason": None},
                  {"index": 0, "delta": {}, "finish_reason": finish}]
        payload = b"".join(
            b"data: " + json.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0,
                                    "model": model, "choices": [c]}).encode() + b"\n\n" for c in chunks)
        payload += b"data: " + json.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0,
                                           "model": model, "choices": [], "usage": usage}).encode() + b"\n\n"
        payload += b"data: [DONE]\n\n"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": payload})

    @staticmethod
    async def _json(send: Any, status: int, data: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        body = json.dumps(data).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), *(headers or [])]})
        await send({"type": "http.response.body", "body": body})


class FastServer:
    """The server in a child process on a free loopback port (a context manager)."""

    def __init__(self, latency: float = 0.0, limit: int | None = None, retry_after: float = 0.1):
        self.latency, self.limit, self.retry_after = latency, limit, retry_after
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> FastServer:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        args = [sys.executable, __file__, "--port", str(self.port), "--latency", str(self.latency),
                "--retry-after", str(self.retry_after)]
        if self.limit is not None:
            args += ["--limit", str(self.limit)]
        self.process = subprocess.Popen(args, env={**os.environ})
        deadline = time.monotonic() + 30
        while True:
            try:
                self.stats()
                return self
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.__exit__()
                    raise RuntimeError("the benchmark server did not start") from None
                time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"{self.base_url}/stats", timeout=5) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.base_url}/reset", method="POST", data=b"")
        urllib.request.urlopen(request, timeout=5).close()


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--retry-after", type=float, default=0.1)
    args = parser.parse_args()
    app = App(args.latency, args.limit, args.retry_after)
    # The dev extra installs both; without them (a notebook-only venv) the server still runs, slower.
    fast = {"loop": "uvloop", "http": "httptools"}
    missing = [name for name in fast.values() if importlib.util.find_spec(name) is None]
    if missing:
        print(f"{' and '.join(missing)} not installed (pip install -e '.[dev]'): serving on asyncio and h11, which "
              "may make this server the bottleneck of a benchmark", file=sys.stderr)
        fast = {"loop": "asyncio", "http": "h11"}
    uvicorn.run(app, host="127.0.0.1", port=args.port, **fast, log_level="warning",
                access_log=False, backlog=4096, timeout_keep_alive=600)  # no idle-close races mid-benchmark


if __name__ == "__main__":
    main()
