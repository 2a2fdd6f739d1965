"""Batches (parallel turns, each on a copy of the history) and sequential chats (turns on the shared history).

The facade's ``batch_run_async`` / ``sequential_run_async`` resolve the run options into settings and call
these; every item runs through :meth:`ChatAgent.run_turn` with those same settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..events import BatchFinished, BatchItemFinished, BatchItemStarted, BatchStarted, Event, EventCallback
from .result import RunResult
from .settings import RunSettings

if TYPE_CHECKING:
    from .chat_agent import ChatAgent


async def run_batch(agent: ChatAgent, items: list[str], settings: RunSettings, max_concurrency: int | str | None,
                    return_exceptions: bool, on_event: EventCallback | None) -> list[RunResult | BaseException]:
    """See :meth:`ChatAgent.batch_run_async`."""
    emit = agent.emitter(on_event)
    batch_id = uuid.uuid4().hex[:12]
    started = time.perf_counter()
    emit(BatchStarted(batch_id, messages=tuple(items), mode="parallel"))
    gate = asyncio.Semaphore(max_concurrency) if isinstance(max_concurrency, int) else None
    snapshot = list(agent.messages)
    results: list[RunResult | BaseException | None] = [None] * len(items)

    async def one(index: int) -> None:
        async with gate if gate is not None else contextlib.nullcontext():
            results[index] = await _item(agent, batch_id, index, items[index], settings, list(snapshot), emit,
                                         on_event)
        outcome = results[index]
        if not return_exceptions and isinstance(outcome, BaseException):
            raise outcome

    tasks = [asyncio.ensure_future(one(i)) for i in range(len(items))]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for i, outcome in enumerate(results):
            if outcome is None:
                results[i] = asyncio.CancelledError()
                emit(BatchItemFinished(batch_id, index=i, status="cancelled", duration=0.0, result=None,
                                       error="cancelled"))
        failed = sum(isinstance(r, BaseException) for r in results)
        emit(BatchFinished(batch_id, ok=len(items) - failed, failed=failed, duration=time.perf_counter() - started))
    return [r for r in results if r is not None]


async def run_sequential(agent: ChatAgent, items: list[str], settings: RunSettings, stop_on_error: bool,
                         on_event: EventCallback | None) -> list[RunResult | BaseException]:
    """See :meth:`ChatAgent.sequential_run_async`."""
    emit = agent.emitter(on_event)
    batch_id = uuid.uuid4().hex[:12]
    started = time.perf_counter()
    emit(BatchStarted(batch_id, messages=tuple(items), mode="sequential"))
    results: list[RunResult | BaseException] = []
    try:
        for index, message in enumerate(items):
            outcome = await _item(agent, batch_id, index, message, settings, None, emit, on_event)
            results.append(outcome)
            if isinstance(outcome, BaseException) and stop_on_error:
                for skipped in range(index + 1, len(items)):
                    emit(BatchItemFinished(batch_id, index=skipped, status="skipped", duration=0.0,
                                           result=None, error="skipped after an earlier error"))
                break
    finally:
        failed = sum(isinstance(r, BaseException) for r in results)
        emit(BatchFinished(batch_id, ok=len(results) - failed, failed=failed,
                           duration=time.perf_counter() - started))
    return results


async def _item(agent: ChatAgent, batch_id: str, index: int, message: str, settings: RunSettings,
                history: list[dict[str, Any]] | None, emit: Callable[[Event], None],
                on_event: EventCallback | None) -> RunResult | BaseException:
    item_id = f"{batch_id}-{index}"
    emit(BatchItemStarted(batch_id, index=index, message=message, item_run_id=item_id))
    started = time.perf_counter()
    try:
        result = await agent.run_turn(message, settings, kind="batch_item", on_event=on_event, messages=history,
                                      run_id=item_id)
    except asyncio.CancelledError:
        emit(BatchItemFinished(batch_id, index=index, status="cancelled", duration=time.perf_counter() - started,
                               result=None, error="cancelled"))
        raise
    duration = time.perf_counter() - started
    if result.stop_reason in ("error", "cancelled"):
        exc = result.failure() if result.stop_reason == "error" else asyncio.CancelledError()
        emit(BatchItemFinished(batch_id, index=index, status=result.stop_reason, duration=duration, result=None,
                               error=result.error or result.stop_reason))
        return exc
    emit(BatchItemFinished(batch_id, index=index, status="ok", duration=duration, result=result.final_output,
                           error=result.error))
    return result
