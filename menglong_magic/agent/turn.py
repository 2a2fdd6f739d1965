"""One turn of a conversation: a user message through the model ↔ tools loop until an answer.

``Turn(agent).run(message, settings)`` is the loop (one iteration = one model request, then the tool calls of
that response, run concurrently); the agent is the facade (:mod:`.chat_agent`). The history invariant lives here:
a turn adds to the history only complete rounds (an assistant message with tool calls is committed together with
every one of its results), so a failure or a cancellation at any point leaves a history the next turn can use.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import re
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..events import (
    ApprovalDecided,
    ApprovalRequested,
    Event,
    EventCallback,
    IterationFinished,
    IterationStarted,
    ModelRequestStarted,
    ModelResponseReceived,
    RunFinished,
    RunStarted,
    ToolCallFinished,
    ToolCallStarted,
    TurnResumed,
    TurnWaiting,
)
from ..loopcache import PerLoop
from ..loopshare import loop_share
from ..models import Model, ModelError, ModelRequest, ModelResponse, ToolCall
from ..secrets import redact
from ..tools import RunContext, Tool, as_tool, execute_tool_call
from ..tools.names import api_name
from .approval import ApprovalDecision, ApprovalRequest, decide, denial_message
from .output import FINAL_RESULT_TOOL, OutputSpec
from .result import IterationLog, RunResult, RunUsage, ToolCallRecord
from .settings import RunSettings

if TYPE_CHECKING:
    from .chat_agent import ChatAgent

_CANCELLED_TOOL_RESULT = "Error: the run was stopped before this tool call finished."
_SYNC_STILL_RUNNING = "cancelled while still running (a sync tool's thread cannot be stopped; see RunContext.cancelled)"
#: A sync tool that takes a RunContext can stop itself: it was told, and its answer is not waited for.
_SYNC_TOLD = "cancelled (its thread was told through RunContext.cancelled)"


def call_arguments(call: ToolCall | None) -> str:
    return (call.arguments or "{}") if call is not None else ""


@dataclass
class RunState:
    """Everything a run has done so far; turned into a RunResult however the run ends."""

    run_id: str
    task: str
    started: float
    settings: RunSettings
    iterations: list[IterationLog] = field(default_factory=list)
    usage: RunUsage = field(default_factory=RunUsage)
    pending: list[dict[str, Any]] = field(default_factory=list)  # not yet committed to the history
    added: list[dict[str, Any]] = field(default_factory=list)  # committed by this run
    final_output: str = ""
    stop_reason: str = "completed"
    error: str | None = None
    exception: BaseException | None = None
    stop_requested: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event)  # RunContext.cancelled
    output: Any = None  # the validated typed answer (output_type)
    output_failures: int = 0


class QueuedTurnWarning(UserWarning):
    """Turns on one agent from several tasks queue behind each other (outside a notebook, once per agent)."""


def _in_a_notebook_kernel() -> bool:
    # In a notebook, queued turns are the point (a --bg run, then the next cell's): no warning there. Only
    # looked up, never imported: the core does not depend on ipykernel.
    app = getattr(sys.modules.get("ipykernel.kernelapp"), "IPKernelApp", None)
    return bool(app is not None and app.initialized())


class TurnLine:
    """An agent's runs: the ordered line of turns on its conversation and the runs in progress.

    Turns that commit to the agent's history hold a FIFO lock (one per event loop) from reading the history to
    committing; ``in_line`` counts turns holding or waiting for it. ``active`` maps run ids to what
    :meth:`ChatAgent.cancel` needs. ``warned`` remembers tool-name clashes already warned about.
    """

    def __init__(self) -> None:
        self._locks: PerLoop[asyncio.Lock] = PerLoop(asyncio.Lock)  # asyncio.Lock wakes waiters in FIFO order
        self.in_line = 0
        self.active: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Task[Any], RunState]] = {}
        self.warned: set[str] = set()

    def lock(self) -> asyncio.Lock:
        return self._locks.get()


class ToolTable(dict[str, Tool]):
    """The run's tools keyed by the name the API sees (``^[a-zA-Z0-9_-]{1,64}$``), with the way back.

    ``original[api_name]`` is the tool's own name (shown to people) when the API name differs.
    """

    def __init__(self) -> None:
        super().__init__()
        self.original: dict[str, str] = {}

    def add(self, name: str, tool: Tool) -> str:
        """Offer ``tool`` (under its table name ``name``); returns the API name it gets."""
        safe = api_name(name, set(self))
        self[safe] = tool
        if safe != name:
            self.original[safe] = name
        return safe

    def shown(self, name: str) -> str:
        """The name a person knows for the API name ``name``."""
        return self.original.get(name, name)

    def resolve(self, name: str) -> str:
        """The API name for a call: ``name`` itself, or the API name of a tool a model called by its own name."""
        if name in self:
            return name
        return next((safe for safe, original in self.original.items() if original == name), name)

    def schemas(self) -> list[dict[str, Any]]:
        out = []
        for safe, tool in self.items():
            schema = tool.schema()
            if schema["function"]["name"] != safe:
                schema = {**schema, "function": {**schema["function"], "name": safe}}
            out.append(schema)
        return out


async def tool_table(settings: RunSettings, warned: set[str]) -> ToolTable:
    """The run's tools: its own, then each toolset's (a clashing name gets the toolset's name as prefix);
    every name offered to the API made valid for it (the table maps it back)."""
    named = dict(settings.tools)
    for toolset in settings.toolsets:
        for t in await toolset.list_tools():
            name = t.name
            if name in named:
                name = f"{toolset.name}_{t.name}"
                if name not in warned:
                    warned.add(name)
                    warnings.warn(f"tool {t.name!r} of {toolset.name!r} clashes with another tool: "
                                  f"offered to the model as {api_name(name, set(named))!r}", stacklevel=2)
                t = as_tool(t, name=name)
            named[name] = t
    table = ToolTable()
    for name, t in named.items():
        table.add(name, t)
    return table


_NAME_PROBLEM = re.compile(r"name\W.{0,80}(pattern|match|invalid|character|too long)|invalid\W.{0,40}name",
                           re.IGNORECASE | re.DOTALL)


def _blames_a_name(message: str) -> bool:
    """Whether a refusal is about a name we sent (a tool's, the schema's), not about ``response_format`` itself."""
    return bool(_NAME_PROBLEM.search(message))


def images_message(calls: list[ToolCall], attachments: dict[str, list[tuple[str, bytes, str]]]) -> dict[str, Any]:
    """The images the turn's tools attached, as image parts of a user message (in the calls' order)."""
    parts: list[dict[str, Any]] = []
    for call in calls:
        for mime, data, description in attachments.get(call.id, []):
            parts.append({"type": "text", "text": f"Attached by {call.name} (call {call.id}): {description}"})
            url = f"data:{mime};base64,{base64.b64encode(data).decode()}"
            parts.append({"type": "image_url", "image_url": {"url": url}})
    return {"role": "user", "content": parts}


class Turn:
    """One user message through the loop, for ``agent`` (its history, events, limiter and line of turns)."""

    def __init__(self, agent: ChatAgent) -> None:
        self.agent = agent

    async def run(
        self,
        message: str,
        settings: RunSettings,
        *,
        kind: str,
        on_event: EventCallback | None = None,
        messages: list[dict[str, Any]] | None = None,
        run_id: str | None = None,
    ) -> RunResult:
        """One user message through the loop, committed to ``messages`` (default: the agent's own history,
        in which case the turn waits for earlier turns of this conversation first)."""
        target = self.agent.messages if messages is None else messages
        state = RunState(run_id=run_id or uuid.uuid4().hex[:12], task=message, started=time.perf_counter(),
                          settings=settings)
        emit = self.agent.emitter(on_event)
        stream = settings.stream if settings.stream is not None else (
            on_event is not None or self.agent.events.has_subscribers)
        # Plain chat is one model call, plus the re-asks a typed answer may need.
        max_iterations = settings.max_iterations if settings.uses_tools else \
            1 + (settings.output_retries if settings.output is not None else 0)
        task = asyncio.current_task()
        assert task is not None
        self.agent.turns.active[state.run_id] = (asyncio.get_running_loop(), task, state)
        emit(
            RunStarted(
                state.run_id,
                agent=self.agent.name,
                model=settings.model.name,
                mode=settings.mode.value,
                task=message,
                max_iterations=max_iterations,
                kind=kind,
            )
        )
        state.pending.append({"role": "user", "content": message})
        cancelled: BaseException | None = None
        conversation = self.agent.turns if messages is None else None
        lock: asyncio.Lock | None = None
        try:
            if conversation is not None:
                lock = await self._enter_turn(conversation, state, emit)
            body = self._loop(state, target, emit, max_iterations, stream)
            if settings.timeout is not None:
                await asyncio.wait_for(body, settings.timeout)
            else:
                await body
        except asyncio.TimeoutError:
            state.stop_reason = "timeout"
            state.error = f"timed out after {settings.timeout:g}s"
        except asyncio.CancelledError as exc:
            state.stop_reason = "cancelled"
            if state.stop_requested:
                if hasattr(task, "uncancel"):
                    task.uncancel()
            else:
                cancelled = exc
        except Exception as exc:
            state.stop_reason = "error"
            state.exception = exc
            state.error = redact(str(exc) or type(exc).__name__)
        except BaseException as exc:  # KeyboardInterrupt raised inside this task (Ctrl-C mid-step)
            state.stop_reason = "cancelled"
            cancelled = exc
        finally:
            self.agent.turns.active.pop(state.run_id, None)
            if state.stop_reason != "completed":
                state.cancelled.set()  # tell sync tools still running in threads
                self._settle(state, target)
            if lock is not None and conversation is not None:
                conversation.in_line -= 1
                lock.release()
            elif conversation is not None and state.stop_reason != "completed":
                conversation.in_line -= 1  # cancelled while waiting for its turn
        if state.stop_reason != "completed" and not state.final_output:
            state.final_output = next((it.text for it in reversed(state.iterations) if it.text), "")
        result = RunResult(
            task=message,
            final_output=state.final_output,
            stop_reason=state.stop_reason,
            iterations=state.iterations,
            usage=state.usage,
            execution_time=time.perf_counter() - state.started,
            model=settings.model.name,
            error=state.error,
            run_id=state.run_id,
            messages=state.added,
            exception=state.exception,
            output=state.output if state.stop_reason == "completed" else None,
        )
        self.agent.last_result = result
        # Saved at the turn's end, in one transaction (menglong_magic/store.py): no half turn is ever stored.
        self.agent.persistence.finished(result, settings, kind=kind, agent=self.agent.name, committed=messages is None)
        emit(RunFinished(state.run_id, result=result))
        if cancelled is not None:
            raise cancelled
        return result

    @staticmethod
    async def _enter_turn(conversation: TurnLine, state: RunState,
                          emit: Callable[[Event], None]) -> asyncio.Lock:
        """Wait (FIFO) until earlier turns of this conversation have committed; returns the held lock."""
        lock = conversation.lock()
        ahead = conversation.in_line
        conversation.in_line += 1
        if not lock.locked() and ahead == 0:
            await lock.acquire()
            return lock
        emit(TurnWaiting(state.run_id, ahead=max(ahead, 1)))
        if "queued" not in conversation.warned and not _in_a_notebook_kernel():
            conversation.warned.add("queued")
            warnings.warn(QueuedTurnWarning(
                "turns on one ChatAgent run one at a time, in order (each sees the earlier ones' history): this "
                "run waits for an earlier one. For independent concurrent work (one request of a web server, a "
                "what-if) use agent.fork() per task, or batch_run_async()."), stacklevel=2)
        waited = time.perf_counter()
        await lock.acquire()  # a CancelledError here is handled by _turn (in_line is given back there)
        emit(TurnResumed(state.run_id, waited=time.perf_counter() - waited))
        return lock

    async def _loop(
        self,
        state: RunState,
        target: list[dict[str, Any]],
        emit: Callable[[Event], None],
        max_iterations: int,
        stream: bool,
    ) -> None:
        settings = state.settings
        tools = await tool_table(settings, self.agent.turns.warned) if settings.uses_tools else ToolTable()
        schemas = tools.schemas()
        model = settings.model
        system = settings.system_messages()
        output = settings.output
        limits = settings.usage_limits
        output_retries = settings.output_retries
        for iteration in range(1, max_iterations + 1):
            if limits is not None:
                exceeded = limits.before_request(state.usage)
                if exceeded:
                    self._stop_for_limit(state, exceeded)
                    return
            started = time.perf_counter()
            emit(IterationStarted(state.run_id, iteration=iteration, max_iterations=max_iterations))
            log = IterationLog(iteration=iteration)
            state.iterations.append(log)
            as_tool_output = output is not None and model.supports_response_format is False
            model_settings = dict(settings.model_settings)
            request_tools = list(schemas)
            if output is not None and not as_tool_output:
                model_settings["response_format"] = output.response_format()
            elif as_tool_output:
                assert output is not None
                request_tools.append(output.tool_schema())
            request = ModelRequest(
                messages=system + target + state.pending,
                tools=request_tools,
                settings=model_settings,
                stream=stream,
                run_id=state.run_id,
                iteration=iteration,
                timeout=settings.request_timeout,
                max_retries=settings.max_retries,
            )
            emit(ModelRequestStarted(state.run_id, iteration=iteration, messages=len(request.messages),
                                     tools=len(request_tools)))
            try:
                # A turn on the loop first (building and sending costs a millisecond of it), then a slot: a request
                # waiting for its turn is not in flight, so the limiter counts only what the server has.
                await loop_share().turn()
                async with self.agent.limiter():
                    response = await self._request(model, request, output, emit)
            except Exception as exc:
                log.error = redact(str(exc) or type(exc).__name__)
                log.duration = time.perf_counter() - started
                raise
            if output is not None and model.supports_response_format is False and not as_tool_output:
                as_tool_output = True  # the server rejected response_format during this very request
            cost = model.price(response.usage) if response.usage is not None else None
            state.usage.add(response.usage, cost)
            log.text = response.text
            log.usage = response.usage
            emit(
                ModelResponseReceived(
                    state.run_id,
                    iteration=iteration,
                    text=response.text,
                    tool_calls=tuple(tools.shown(tools.resolve(c.name)) for c in response.tool_calls),
                    usage=response.usage,
                    duration=time.perf_counter() - started,
                    cost=cost,
                    note=response.note,
                )
            )
            if limits is not None and response.tool_calls:
                exceeded = limits.after_response(state.usage, len(response.tool_calls))
                if exceeded:  # don't act on it: the unanswered tool calls are not committed
                    log.duration = time.perf_counter() - started
                    self._stop_for_limit(state, exceeded)
                    return
            state.pending.append(response.to_message())
            final_call = next((c for c in response.tool_calls if c.name == FINAL_RESULT_TOOL), None) \
                if as_tool_output else None
            problem: str | None = None
            if final_call is not None:
                assert output is not None
                try:
                    state.output = output.parse_data(json.loads(call_arguments(final_call)))
                except ValueError as exc:
                    problem = str(exc)
                for call in response.tool_calls:  # answer every call: the history stays valid
                    if call is final_call:
                        content = "Final result accepted." if problem is None else \
                            f"Error: {output.retry_prompt(problem, tool=True)}"
                    else:
                        content = "Not executed: the final result was given in the same turn."
                    state.pending.append({"role": "tool", "tool_call_id": call.id, "content": content})
            elif response.tool_calls:
                state.usage.tool_calls += len(response.tool_calls)
                await self._run_tools(state, log, response, tools, emit, iteration)
            elif output is not None:
                try:
                    state.output = output.parse_text(response.text or "")
                except ValueError as exc:
                    problem = str(exc)
                    state.pending.append({"role": "user",
                                          "content": output.retry_prompt(problem, tool=as_tool_output)})
            self.commit(state, target)
            log.duration = time.perf_counter() - started
            emit(IterationFinished(state.run_id, iteration=iteration, duration=log.duration,
                                   tool_calls=len(response.tool_calls)))
            if final_call is not None or (not response.tool_calls):
                answer = call_arguments(final_call) if final_call is not None else (response.text or "")
                if problem is None and not answer.strip():
                    # Neither a tool call nor any text: not an answer, so the task is not completed.
                    state.stop_reason = "no_answer"
                    state.error = "the model ended its turn without an answer (empty text, no tool calls)"
                    return
                if problem is None:
                    state.final_output = answer
                    state.stop_reason = "completed"
                    return
                state.output_failures += 1
                if state.output_failures > output_retries:
                    state.final_output = answer
                    state.stop_reason = "output_invalid"
                    state.error = f"the answer never matched the output type: {problem}"
                    return
        state.stop_reason = "max_iterations"

    async def _request(self, model: Model, request: ModelRequest, output: OutputSpec | None,
                       emit: Callable[[Event], None]) -> ModelResponse:
        """One model request; a server that rejects ``response_format`` gets the final-answer tool instead."""
        if output is None or "response_format" not in request.settings or model.supports_response_format:
            return await model.request(request, emit)
        try:
            response = await model.request(request, emit)
        except ModelError as first:
            if first.status not in (400, 422):
                raise
            for_good = not _blames_a_name(str(first))  # our own bad name: not a reason to give up response_format
            fallback = dataclasses.replace(
                request, settings={k: v for k, v in request.settings.items() if k != "response_format"},
                tools=[*request.tools, output.tool_schema()])
            try:
                response = await model.request(fallback, emit)
            except ModelError:
                raise first from None
            if for_good:
                model.supports_response_format = False  # from now on: the final-answer tool
            return response
        model.supports_response_format = True
        return response

    @staticmethod
    def _stop_for_limit(state: RunState, limit: str) -> None:
        state.stop_reason = "usage_limit"
        state.error = f"usage limit reached: {limit}"

    async def _run_tools(
        self,
        state: RunState,
        log: IterationLog,
        response: ModelResponse,
        tools: ToolTable,
        emit: Callable[[Event], None],
        iteration: int,
    ) -> None:
        """Run the turn's tool calls concurrently; results are appended in the calls' order."""
        records = []
        keys = [tools.resolve(call.name) for call in response.tool_calls]  # API names → the table's tools
        for call, key in zip(response.tool_calls, keys, strict=True):  # arguments: a JSON object text (checked)
            records.append(ToolCallRecord(id=call.id, name=tools.shown(key), arguments=json.loads(call.arguments)))
        log.tool_calls = records
        attachments: dict[str, list[tuple[str, bytes, str]]] = {}
        context = RunContext(state.run_id, self.agent, cancelled=state.cancelled, _emit=emit,
                             _loop=asyncio.get_running_loop(),
                             _attachments=attachments if state.settings.model.accepts_images else None)
        started: dict[int, float] = {}

        settings = state.settings
        awaiting: set[int] = set()  # calls waiting for a decision

        async def one(index: int) -> None:
            call, record, key = response.tool_calls[index], records[index], keys[index]
            name = record.name  # the tool's own name; the API saw `key`
            emit(ToolCallStarted(state.run_id, iteration=iteration, call_id=call.id, name=name,
                                 arguments=record.arguments, api_name=key if key != name else None))
            started[index] = time.perf_counter()
            if call.problem is not None:  # not run: the model gets the problem back and can call again
                record.error = f"tool {key!r} was not run: {call.problem}"
                record.result = f"Error: {record.error}. Call it again with a JSON object as its arguments."
                record.duration = time.perf_counter() - started[index]
                emit(ToolCallFinished(state.run_id, iteration=iteration, call_id=call.id, name=name,
                                      ok=False, result=None, error=record.error, duration=record.duration,
                                      status="error"))
                return
            if settings.needs_approval(tools.get(key)):
                emit(ApprovalRequested(state.run_id, iteration=iteration, call_id=call.id, name=name,
                                       arguments=record.arguments, agent=self.agent.name))
                request = ApprovalRequest(name, record.arguments, call.id, state.run_id, self.agent.name,
                                          iteration)
                awaiting.add(index)
                try:
                    decision = await decide(settings.approve, request, settings.approval_timeout)
                except Exception as exc:  # a broken approver denies; the run goes on
                    decision = ApprovalDecision(False, f"the approver failed: {type(exc).__name__}: {exc}",
                                                "callback")
                awaiting.discard(index)
                record.approval = decision
                emit(ApprovalDecided(state.run_id, iteration=iteration, call_id=call.id, name=name,
                                     approved=decision.approved, reason=decision.reason, by=decision.by))
                if not decision.approved:
                    record.result = denial_message(decision)
                    record.duration = time.perf_counter() - started[index]
                    emit(ToolCallFinished(state.run_id, iteration=iteration, call_id=call.id, name=name,
                                          ok=False, result=None, error=record.result, duration=record.duration,
                                          status="denied"))
                    return
                started[index] = time.perf_counter()
            outcome = await execute_tool_call(tools, key, call.arguments, context.for_call(name, call.id, iteration))
            record.result, record.error, record.duration = outcome.content, outcome.error, outcome.duration
            emit(ToolCallFinished(state.run_id, iteration=iteration, call_id=call.id, name=name,
                                  ok=outcome.ok, result=outcome.content if outcome.ok else None,
                                  error=outcome.error, duration=outcome.duration,
                                  status="ok" if outcome.ok else "error"))

        tasks = [asyncio.ensure_future(one(i)) for i in range(len(records))]
        try:
            await asyncio.gather(*tasks)
        except asyncio.CancelledError:
            state.cancelled.set()  # before anything else: sync tools polling it stop now
            raise
        finally:
            # On cancellation gather has cancelled the siblings; wait until they have really stopped.
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for index, record in enumerate(records):
                if record.result is None and index in started:
                    tool = tools.get(keys[index])
                    if index in awaiting:
                        record.error = "cancelled while awaiting approval (not executed)"
                    elif tool is not None and not tool.is_async:
                        record.error = _SYNC_STILL_RUNNING if tool.context_parameter is None else _SYNC_TOLD
                    else:
                        record.error = "cancelled"
                    record.duration = time.perf_counter() - started[index]
                    emit(ToolCallFinished(state.run_id, iteration=iteration, call_id=record.id, name=record.name,
                                          ok=False, result=None, error=record.error, duration=record.duration,
                                          status="cancelled"))
        for call, record in zip(response.tool_calls, records, strict=True):
            state.pending.append({"role": "tool", "tool_call_id": call.id, "content": record.result or ""})
        if attachments:  # tool messages carry text only: images follow as one user message of the same round
            state.pending.append(images_message(response.tool_calls, attachments))

    # ----------------------------------------------------------------- history invariant
    @staticmethod
    def commit(state: RunState, target: list[dict[str, Any]]) -> None:
        target.extend(state.pending)
        state.added.extend(state.pending)
        state.pending.clear()

    def _settle(self, state: RunState, target: list[dict[str, Any]]) -> None:
        """After an abnormal stop: keep finished tool work (answered), drop what has no complete round.

        The history never holds an assistant tool call without all of its tool results.
        """
        pending = state.pending
        last_assistant = next(
            (i for i in range(len(pending) - 1, -1, -1) if pending[i].get("role") == "assistant"), None
        )
        if last_assistant is not None and pending[last_assistant].get("tool_calls"):
            calls = pending[last_assistant]["tool_calls"]
            answered = {m.get("tool_call_id") for m in pending[last_assistant + 1 :]}
            records = {r.id: r for r in state.iterations[-1].tool_calls} if state.iterations else {}
            finished = [r for r in records.values() if r.result is not None]
            if finished:
                for tc in calls:
                    if tc["id"] not in answered:
                        record = records.get(tc["id"])
                        content = record.result if record and record.result is not None else None
                        if content is None:
                            content = _CANCELLED_TOOL_RESULT
                            if record is not None:
                                record.error = record.error or "cancelled"
                        pending.append({"role": "tool", "tool_call_id": tc["id"], "content": content})
                self.commit(state, target)
                return
        pending.clear()
