"""A real ipykernel driven over ZMQ by jupyter_client, read through its iopub messages."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from jupyter_client.manager import KernelManager


@dataclass
class Execution:
    msg_id: str
    messages: list[dict[str, Any]] = field(default_factory=list)  # iopub messages of this request, in order
    reply: dict[str, Any] | None = None

    @property
    def stdout(self) -> str:
        return "".join(m["content"]["text"] for m in self.messages
                       if m["msg_type"] == "stream" and m["content"]["name"] == "stdout")

    @property
    def stderr(self) -> str:
        return "".join(m["content"]["text"] for m in self.messages
                       if m["msg_type"] == "stream" and m["content"]["name"] == "stderr")

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [m["content"] for m in self.messages if m["msg_type"] == "error"]

    def data(self, mime: str = "text/plain") -> list[str]:
        """Every display/result payload of this MIME type, in order."""
        return [m["content"]["data"][mime] for m in self.messages
                if m["msg_type"] in ("execute_result", "display_data", "update_display_data")
                and mime in m["content"].get("data", {})]

    def of_type(self, msg_type: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["msg_type"] == msg_type]


class Kernel:
    def __init__(self, km: KernelManager):
        self.km = km
        self.client = km.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)
        self._pending: dict[str, Execution] = {}

    def submit(self, code: str) -> Execution:
        msg_id = self.client.execute(code, allow_stdin=False)
        execution = Execution(msg_id)
        self._pending[msg_id] = execution
        return execution

    def wait(self, execution: Execution, timeout: float = 60) -> Execution:
        """Collect iopub messages until this request's idle status."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no idle for {execution.msg_id} within {timeout}s; got "
                                   f"{[m['msg_type'] for m in execution.messages]}")
            try:
                msg = self.client.get_iopub_msg(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            msg["_received"] = time.monotonic()
            parent = msg.get("parent_header", {}).get("msg_id")
            target = self._pending.get(parent)
            if target is None:
                continue
            target.messages.append(msg)
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle" and target is execution:
                break
        execution.reply = self.reply_to(execution.msg_id)
        return execution

    def reply_to(self, msg_id: str, timeout: float = 10) -> dict[str, Any]:
        """The shell reply to ``msg_id`` (replies to other requests are kept for their own callers)."""
        replies = self.__dict__.setdefault("_replies", {})
        deadline = time.monotonic() + timeout
        while msg_id not in replies:
            msg = self.client.get_shell_msg(timeout=max(deadline - time.monotonic(), 0.01))
            replies[msg["parent_header"].get("msg_id")] = msg
        return replies.pop(msg_id)

    def run(self, code: str, timeout: float = 60) -> Execution:
        return self.wait(self.submit(code), timeout)

    def ok(self, code: str, timeout: float = 60) -> Execution:
        execution = self.run(code, timeout)
        assert not execution.errors, execution.errors
        return execution


@pytest.fixture
def kernel(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Kernel]:
    """A fresh python3 kernel (this venv's interpreter) on 127.0.0.1; shut down after the test."""
    monkeypatch.setenv("MENGLONG_MODEL", "offline")
    km = KernelManager(kernel_name="python3")
    km.ip = "127.0.0.1"
    km.start_kernel(cwd=str(tmp_path))
    k = Kernel(km)
    try:
        yield k
    finally:
        k.client.stop_channels()
        km.shutdown_kernel(now=True)
