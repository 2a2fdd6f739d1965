"""Sync entry points: one reusable event loop per thread, and a clear error inside a running loop."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class RunningLoopError(RuntimeError):
    """A sync method was called where an event loop is already running (Jupyter, FastAPI, ...)."""


_local = threading.local()


class _ThreadLoop:
    """This thread's loop, closed (after shutting down its async generators, which closes the per-loop
    HTTP clients) when the thread ends and its thread-local storage goes, or at interpreter exit."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        # weakref.finalize runs at exit too; one entry per live thread (not an atexit hook per thread).
        self._finalizer = weakref.finalize(self, _close, self.loop)


def _thread_loop() -> asyncio.AbstractEventLoop:
    # One loop per thread, reused across calls: asyncio.run() per call would close the loop that a
    # cached AsyncOpenAI/httpx client is bound to, breaking the second call.
    holder: _ThreadLoop | None = getattr(_local, "holder", None)
    if holder is None or holder.loop.is_closed():
        holder = _local.holder = _ThreadLoop()
    return holder.loop


def _close(loop: asyncio.AbstractEventLoop) -> None:
    # Let cached HTTP clients' async generators finish (closing the clients) instead of leaking them.
    if loop.is_closed() or loop.is_running():
        return
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # the usual case: nothing runs here, so the loop can shut down its generators
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()  # per-loop caches drop the values of closed loops at their next access


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
