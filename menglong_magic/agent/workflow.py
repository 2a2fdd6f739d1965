"""Workflows: named steps run in order, each given the previous step's output and a shared state dict."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..events import Event, WorkflowFinished, WorkflowStepFinished, WorkflowStepStarted
from ..markup import shorten

if TYPE_CHECKING:
    from .chat_agent import ChatAgent

Action = Callable[..., Any] | str
Condition = Callable[..., Any]


@dataclass
class WorkflowStep:
    """``action`` is a sync/async callable ``f(previous, state)`` (or ``f(previous)``), or a prompt string
    formatted with ``{input}`` (the previous output) and the state's keys, then sent as a chat turn.
    ``condition(previous, state)`` (sync or async) decides whether the step runs."""

    name: str
    action: Action
    condition: Condition | None = None


@dataclass
class StepResult:
    name: str
    status: str  # "ok" | "error" | "skipped"
    output: Any = None
    error: str | None = None
    duration: float = 0.0


@dataclass
class WorkflowResult:
    """Each step's output, error and duration; ``output`` is what the last step produced."""

    input: Any
    output: Any
    steps: list[StepResult]
    state: dict[str, Any]
    execution_time: float

    @property
    def success(self) -> bool:
        return all(s.status != "error" for s in self.steps)

    def __repr__(self) -> str:
        lines = [f"WorkflowResult({'ok' if self.success else 'failed'} · {len(self.steps)} step(s) · "
                 f"{self.execution_time:.2f}s)"]
        for s in self.steps:
            detail = s.error if s.status == "error" else repr(s.output)
            detail = shorten(detail, 120) if detail else detail
            lines.append(f"  {s.name}: {s.status} {s.duration:.2f}s {detail if s.status != 'skipped' else ''}".rstrip())
        return "\n".join(lines)


class _Strict(dict):
    def __missing__(self, key: str) -> Any:
        raise KeyError(f"prompt step refers to {{{key}}}, which is neither 'input' nor a state key")


async def _call(fn: Callable[..., Any], previous: Any, state: dict[str, Any]) -> Any:
    try:
        positional = [p for p in inspect.signature(fn).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
        two = len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in positional)
    except (TypeError, ValueError):
        two = True
    args = (previous, state) if two else (previous,)
    if inspect.iscoroutinefunction(fn):
        return await fn(*args)
    value = await asyncio.to_thread(fn, *args)  # sync steps off the loop, like sync tools
    if inspect.isawaitable(value):
        value = await value
    return value


async def run_workflow(agent: ChatAgent, steps: list[WorkflowStep], value: Any, emit: Callable[[Event], None],
                       run_id: str, on_event: Callable[[Event], Any] | None,
                       options: Mapping[str, Any] | None = None) -> WorkflowResult:
    """Run ``steps`` on ``value``; prompt steps are chat turns with the run ``options`` (AUTO when there are
    tools or toolsets, else NORMAL, unless the options say which)."""
    step_options = dict(options or {})
    if step_options.get("toolsets") is not None:  # every prompt step gets them (an iterator would serve one)
        step_options["toolsets"] = tuple(step_options["toolsets"])
    if step_options.get("mode") is None:
        uses = step_options.get("tools") or agent.tools or step_options.get("toolsets") or agent.toolsets
        step_options["mode"] = "auto" if uses else "normal"
    started = time.perf_counter()
    state: dict[str, Any] = {}
    results: list[StepResult] = []
    previous = value
    failed = False
    for index, step in enumerate(steps):
        if failed:
            results.append(StepResult(step.name, "skipped"))
            emit(WorkflowStepFinished(run_id, index=index, name=step.name, status="skipped", output=None,
                                      error="skipped after an earlier error", duration=0.0))
            continue
        emit(WorkflowStepStarted(run_id, index=index, name=step.name))
        t = time.perf_counter()
        try:
            if step.condition is not None and not await _call(step.condition, previous, state):
                results.append(StepResult(step.name, "skipped", duration=time.perf_counter() - t))
                emit(WorkflowStepFinished(run_id, index=index, name=step.name, status="skipped", output=None,
                                          error=None, duration=time.perf_counter() - t))
                continue
            if isinstance(step.action, str):
                prompt = step.action.format_map(_Strict({**state, "input": previous}))
                result = await agent.chat_result_async(prompt, on_event=on_event, **step_options)
                result.raise_for_error()
                output: Any = result.final_output
            else:
                output = await _call(step.action, previous, state)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failed = True
            message = f"{type(exc).__name__}: {exc}"
            results.append(StepResult(step.name, "error", error=message, duration=time.perf_counter() - t))
            emit(WorkflowStepFinished(run_id, index=index, name=step.name, status="error", output=None,
                                      error=message, duration=time.perf_counter() - t))
            continue
        duration = time.perf_counter() - t
        state[step.name] = output
        previous = output
        results.append(StepResult(step.name, "ok", output=output, duration=duration))
        emit(WorkflowStepFinished(run_id, index=index, name=step.name, status="ok", output=output, error=None,
                                  duration=duration))
    result = WorkflowResult(input=value, output=previous, steps=results, state=state,
                            execution_time=time.perf_counter() - started)
    emit(WorkflowFinished(run_id, ok=sum(s.status == "ok" for s in results),
                          failed=sum(s.status == "error" for s in results), duration=result.execution_time))
    return result

