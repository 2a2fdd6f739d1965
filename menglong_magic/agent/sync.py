"""Sync entry points: one reusable event loop per thread, and a clear error inside a running loop."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class RunningLoopError(RuntimeError):
    """A sync method was called where an event loop is already running (Jupyter, FastAPI, ...)."""


_local = threading.local()


def _thread_loop() -> asyncio.AbstractEventLoop:
    # One loop per thread, reused across calls: asyncio.run() per call would close the loop that a
    # cached AsyncOpenAI/httpx client is bound to, breaking the second call.
    loop = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        _local.loop = loop
        atexit.register(_close, loop)
    return loop


def _close(loop: asyncio.AbstractEventLoop) -> None:
    # Let cached HTTP clients' async generators finish instead of warning at interpreter exit.
    if not loop.is_closed() and not loop.is_running():
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def run_sync(coro: Coroutine[Any, Any, T], async_hint: str) -> T:
    """Run ``coro`` to completion on this thread's loop.

    ``async_hint`` names the awaitable to use instead when a loop is already running, e.g.
    ``"await agent.arun(...)"``. On Ctrl-C the task is cancelled (and finishes its cleanup) before
    KeyboardInterrupt propagates.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        coro.close()
        raise RunningLoopError(
            f"this is a blocking call and an event loop is already running here (as in Jupyter); "
            f"use `{async_hint}` instead (or the %agent / %agent_run magics in a notebook)"
        )
    return drive(_thread_loop(), coro)


def drive(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    """``loop.run_until_complete`` that, on Ctrl-C, cancels the task and lets it clean up first."""
    task = loop.create_task(coro)
    try:
        return loop.run_until_complete(task)
    except KeyboardInterrupt:
        task.cancel()
        try:
            loop.run_until_complete(task)
        except KeyboardInterrupt as reported:  # the task's own account of the interrupt (e.g. a magic's)
            raise reported from None
        except BaseException:
            pass
        raise
