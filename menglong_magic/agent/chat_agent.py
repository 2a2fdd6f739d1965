"""ChatAgent: the facade (defaults, entry points, batches, tools, workflows); the loop itself is :mod:`.turn`.

No IPython or ipywidgets import anywhere in this package."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..events import (
    BatchFinished,
    BatchItemFinished,
    BatchItemStarted,
    BatchStarted,
    Event,
    EventBus,
    EventCallback,
    EventSubscription,
    dispatch,
)
from ..loopcache import PerLoop
from ..maps.run import MapResult, map_async
from ..models import Model, resolve_model
from ..tools.base import Tool, Toolset, as_tool, collect_tools, flatten_tools
from ..usage import UsageLimits
from .approval import Approver
from .context import ContextSummary
from .limiter import AdaptiveLimiter
from .output import OutputSpec
from .result import RunResult
from .settings import ChatMode, RunSettings, env_max_retries, env_request_timeout
from .sync import run_sync
from .turn import RunState, Turn, TurnLine
from .workflow import WorkflowResult, WorkflowStep, run_workflow


def _output_spec(output_type: Any) -> OutputSpec | None:
    return None if output_type is None else OutputSpec.of(output_type)


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


class ChatAgent:
    """An async chat agent with tools.

    ``model`` is a :class:`~menglong_magic.models.Model`, a model name, ``"local"``, ``"offline"``, or
    None (see :func:`~menglong_magic.models.resolve_model`; resolved on first use). ``system`` is the
    system prompt. ``max_concurrency`` bounds the model requests in flight for everything this agent
    does: ``"auto"`` (default) adapts to the server (AIMD: grows while requests succeed, backs off on
    429/503, see :mod:`~menglong_magic.agent.limiter`), an integer is a fixed bound.
    does. ``stream=None`` streams whenever someone listens to the events (a panel, a text view).
    ``request_timeout`` (seconds per model request) and ``max_retries`` (of transient errors) default to
    ``MENGLONG_REQUEST_TIMEOUT`` / ``MENGLONG_MAX_RETRIES``, else the model's own; changes apply from the
    next request.

    These attributes are the agent's *defaults*. A run's own settings are arguments of that run
    (``arun(task, model=..., system=..., tools=..., mode=...)``); runs never write them back.
    Turns that commit to this agent's history run one at a time, in the order they started; use
    :meth:`fork` (or a batch) for independent parallel work.
    """

    _names = itertools.count(1)

    def __init__(
        self,
        model: Model | str | None = None,
        system: str | None = None,
        mode: ChatMode | str = ChatMode.NORMAL,
        tools: Iterable[Any] | None = None,
        max_iterations: int = 10,
        *,
        name: str | None = None,
        max_concurrency: int | str = "auto",
        stream: bool | None = None,
        timeout: float | None = None,
        model_settings: dict[str, Any] | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        default_headers: dict[str, str] | None = None,
        request_timeout: float | None = None,
        max_retries: int | None = None,
        approve: Approver | None = None,
        approval_timeout: float | None = None,
        toolsets: Iterable[Toolset] | None = None,
        mcp_servers: Iterable[Toolset] | None = None,
        output_type: Any = None,
        output_retries: int = 2,
        usage_limits: UsageLimits | None = None,
    ):
        options = {k: v for k, v in (("base_url", base_url), ("api_key", api_key),
                                     ("default_headers", default_headers)) if v}
        self._model_spec: Model | str | None = model
        self._model_options = options
        self._model: Model | None = model if isinstance(model, Model) else None
        if model is not None or options:
            self._model = resolve_model(model, **options)  # fail early on a bad spec or endpoint
        self.system = system
        self.mode = ChatMode(mode)
        self.tools: dict[str, Tool] = collect_tools(tools)
        if max_iterations < 1:
            raise ValueError("max_iterations must be at least 1")
        self.max_iterations = max_iterations
        self.name = name or f"agent-{next(self._names)}"
        if max_concurrency != "auto" and (not isinstance(max_concurrency, int) or max_concurrency < 1):
            raise ValueError('max_concurrency must be "auto" or at least 1')
        self.max_concurrency = max_concurrency
        self.stream = stream
        self.timeout = timeout
        self.model_settings = dict(model_settings or {})
        self.request_timeout = request_timeout
        self.max_retries = max_retries
        #: Decides tool calls that need approval (``@tool(requires_approval=True)``, or ``approve_all``).
        self.approve = approve
        self.approval_timeout = approval_timeout
        #: Tool sources opened on first use (MCP servers: ``mcp_servers=`` is the same list).
        self.toolsets: list[Toolset] = [*(toolsets or ()), *(mcp_servers or ())]
        #: Runs answer with a validated instance of this type (``result.output``) unless a run says otherwise.
        self.output_type = output_type
        self.output_retries = output_retries
        self.usage_limits = usage_limits
        self.messages: list[dict[str, Any]] = []  # the conversation, without the system prompt
        self.events = EventBus()
        self.last_result: RunResult | None = None
        self.workflow: list[WorkflowStep] = []
        self._limiters: PerLoop[asyncio.Semaphore | AdaptiveLimiter] = PerLoop(self._new_limiter)
        self.turns = TurnLine()

    @property
    def model(self) -> Model:
        """The default model (resolved from the spec given to the constructor on first use)."""
        if self._model is None:
            self._model = resolve_model(self._model_spec, **self._model_options)
        return self._model

    @model.setter
    def model(self, value: Model | str | None) -> None:
        self._model_spec = value
        self._model = value if isinstance(value, Model) else resolve_model(value, **self._model_options)

    def __repr__(self) -> str:
        return (
            f"ChatAgent(name={self.name!r}, model={self.model.name!r}, mode={self.mode.value!r}, "
            f"tools={sorted(self.tools)!r}, messages={len(self.messages)})"
        )

    # ----------------------------------------------------------------- settings and forks
    def settings(
        self,
        *,
        model: Model | str | None = None,
        system: str | None = None,
        tools: Iterable[Any] | Mapping[str, Tool] | None = None,
        mode: ChatMode | str | None = None,
        max_iterations: int | None = None,
        timeout: float | _Unset | None = UNSET,
        model_settings: Mapping[str, Any] | None = None,
        request_timeout: float | None = None,
        max_retries: int | None = None,
        approve: Approver | None = None,
        approve_all: bool = False,
        approval_timeout: float | None = None,
        output_type: Any = None,
        usage_limits: UsageLimits | None = None,
    ) -> RunSettings:
        """This agent's defaults with a run's overrides (None: the default). ``system=""`` means none."""
        if isinstance(tools, Mapping):
            run_tools = {t.name: t for t in (as_tool(v) for v in tools.values())}
        elif tools is not None:
            run_tools = collect_tools(tools)
        else:
            run_tools = dict(self.tools)
        request_timeout = request_timeout if request_timeout is not None else self.request_timeout
        max_retries = max_retries if max_retries is not None else self.max_retries
        return RunSettings(
            model=self.model if model is None else resolve_model(model),
            system=self.system if system is None else (system or None),
            mode=self.mode if mode is None else ChatMode(mode),
            tools=run_tools,
            max_iterations=max_iterations or self.max_iterations,
            timeout=self.timeout if timeout is UNSET else timeout,  # type: ignore[arg-type]
            model_settings={**self.model_settings, **(model_settings or {})},
            stream=self.stream,
            request_timeout=request_timeout if request_timeout is not None else env_request_timeout(),
            max_retries=max_retries if max_retries is not None else env_max_retries(),
            approve=approve if approve is not None else self.approve,
            approve_all=approve_all,
            approval_timeout=approval_timeout if approval_timeout is not None else self.approval_timeout,
            toolsets=tuple(self.toolsets),
            output=_output_spec(output_type if output_type is not None else self.output_type),
            output_retries=self.output_retries,
            usage_limits=usage_limits if usage_limits is not None else self.usage_limits,
        )

    def fork(self, name: str | None = None) -> ChatAgent:
        """A new agent with a copy of this history and the same model, tools and defaults.

        For independent parallel work (a web request, a what-if branch): its turns do not wait for this
        agent's, and nothing it does changes this agent. It shares this agent's concurrency limit.
        """
        twin = ChatAgent.__new__(ChatAgent)
        twin.__dict__.update(self.__dict__)
        twin.name = name or f"{self.name}-fork-{next(self._names)}"
        twin.tools = dict(self.tools)
        twin.model_settings = dict(self.model_settings)
        twin.messages = [dict(m) for m in self.messages]
        twin.workflow = list(self.workflow)
        twin.toolsets = list(self.toolsets)  # shared servers: closing them is the original agent's job
        twin.events = EventBus()
        twin.last_result = None
        twin.turns = TurnLine()
        return twin  # _limiters is shared on purpose: one bound for the agent and its forks

    # ----------------------------------------------------------------- history and events
    @property
    def history(self) -> list[dict[str, Any]]:
        """The full OpenAI chat-format history: the system prompt (if any), then the conversation."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + list(self.messages)

    def subscribe(self, callback: EventCallback) -> Callable[[], None]:
        """Call ``callback(event)`` for every event of every run; returns an unsubscribe function."""
        return self.events.subscribe(callback)

    def stream_events(self, run_id: str | None = None) -> EventSubscription:
        """``async with agent.stream_events() as events: async for event in events: ...``"""
        return self.events.stream(run_id)

    def limiter(self) -> asyncio.Semaphore | AdaptiveLimiter:
        """What bounds this agent's model requests on the running loop (``async with agent.limiter():``):
        an :class:`AdaptiveLimiter` for ``max_concurrency="auto"``, else a semaphore."""
        return self._limiters.get()

    def _new_limiter(self) -> asyncio.Semaphore | AdaptiveLimiter:
        return AdaptiveLimiter() if self.max_concurrency == "auto" else asyncio.Semaphore(self.max_concurrency)

    def add_tool(self, obj: Any, name: str | None = None, description: str | None = None) -> Tool:
        t = as_tool(obj, name=name, description=description)
        self.tools[t.name] = t
        return t

    # ----------------------------------------------------------------- public async API
    async def chat_async(
        self,
        message: str,
        *,
        model: Model | str | None = None,
        system: str | None = None,
        tools: Iterable[Any] | None = None,
        mode: ChatMode | str | None = None,
        approve: Approver | None = None,
        approve_all: bool = False,
        output_type: Any = None,
        usage_limits: UsageLimits | None = None,
        **model_kwargs: Any,
    ) -> Any:
        """One user turn; returns the answer text. In AUTO mode tools run until the model answers.

        In WORKFLOW mode the message is the workflow's input and the last step's output is returned.
        ``model``/``system``/``tools``/``mode`` apply to this turn only.
        """
        settings = self.settings(model=model, system=system, tools=tools, mode=mode, model_settings=model_kwargs,
                                 approve=approve, approve_all=approve_all, output_type=output_type,
                                 usage_limits=usage_limits)
        if settings.mode is ChatMode.WORKFLOW:
            workflow = await self.execute_workflow_async(message)
            failed = next((s for s in workflow.steps if s.status == "error"), None)
            if failed is not None:
                raise RuntimeError(f"workflow step {failed.name!r} failed: {failed.error}")
            return str(workflow.output)
        result = await self.run_turn(message, settings, kind="chat")
        result.raise_for_error()
        if settings.output is not None:
            if result.stop_reason != "completed":
                raise ValueError(f"no {settings.output.name} answer: {result.error or result.stop_reason}")
            return result.output
        return result.final_output

    async def arun(
        self,
        task: str,
        max_iterations: int | None = None,
        timeout: float | None = None,
        *,
        model: Model | str | None = None,
        system: str | None = None,
        tools: Iterable[Any] | None = None,
        mode: ChatMode | str | None = None,
        on_event: EventCallback | None = None,
        approve: Approver | None = None,
        approve_all: bool = False,
        output_type: Any = None,
        usage_limits: UsageLimits | None = None,
        **model_kwargs: Any,
    ) -> RunResult:
        """An autonomous task (AUTO mode unless ``mode`` says otherwise); always returns a RunResult.

        ``model``/``system``/``tools``/``mode`` apply to this run only. Cancelling the awaiting task
        cancels the run (the history stays valid) and raises CancelledError as usual; :meth:`cancel`
        instead makes the run return a "cancelled" result.
        """
        settings = self.settings(model=model, system=system, tools=tools, mode=mode or ChatMode.AUTO,
                                 max_iterations=max_iterations,
                                 timeout=timeout if timeout is not None else UNSET, model_settings=model_kwargs,
                                 approve=approve, approve_all=approve_all, output_type=output_type,
                                 usage_limits=usage_limits)
        if settings.mode is ChatMode.WORKFLOW:
            raise ValueError("arun runs a task; for workflows use execute_workflow_async(input)")
        return await self.run_turn(task, settings, kind="run", on_event=on_event)

    async def chat_result_async(
        self,
        message: str,
        *,
        on_event: EventCallback | None = None,
        max_iterations: int | None = None,
        timeout: float | None = None,
        model: Model | str | None = None,
        system: str | None = None,
        tools: Iterable[Any] | None = None,
        mode: ChatMode | str | None = None,
        approve: Approver | None = None,
        approve_all: bool = False,
        output_type: Any = None,
        usage_limits: UsageLimits | None = None,
        **model_kwargs: Any,
    ) -> RunResult:
        """Like :meth:`chat_async` but returns the full RunResult (used by the magics)."""
        settings = self.settings(model=model, system=system, tools=tools, mode=mode, max_iterations=max_iterations,
                                 timeout=timeout if timeout is not None else UNSET, model_settings=model_kwargs,
                                 approve=approve, approve_all=approve_all, output_type=output_type,
                                 usage_limits=usage_limits)
        if settings.mode is ChatMode.WORKFLOW:
            raise ValueError("workflow mode: use execute_workflow_async(input) (or chat_async)")
        return await self.run_turn(message, settings, kind="chat", on_event=on_event)

    def cancel(self, run_id: str | None = None) -> int:
        """Stop a run (or every active run) of this agent. Thread-safe; the run returns "cancelled".

        Returns how many runs were asked to stop.
        """
        targets = [v for k, v in list(self.turns.active.items()) if run_id is None or k == run_id]
        for loop, task, state in targets:

            def stop(task: asyncio.Task[Any] = task, state: RunState = state) -> None:
                if not task.done() and state.run_id in self.turns.active:
                    state.stop_requested = True
                    task.cancel()

            try:
                loop.call_soon_threadsafe(stop)
            except RuntimeError:  # loop closed meanwhile
                pass
        return len(targets)

    # ----------------------------------------------------------------- workflows
    def add_workflow_step(self, name: str, action: Any, condition: Any = None) -> WorkflowStep:
        """Append a step: a sync/async callable ``f(previous, state)`` or a prompt string (a chat turn)."""
        step = WorkflowStep(name, action, condition)
        self.workflow.append(step)
        return step

    async def add_workflow_step_async(self, name: str, action: Any, condition: Any = None) -> WorkflowStep:
        return self.add_workflow_step(name, action, condition)

    async def execute_workflow_async(self, input: Any, *, on_event: EventCallback | None = None) -> WorkflowResult:
        """Run the steps in order on ``input``; each step's output, error and duration are in the result."""
        if not self.workflow:
            raise ValueError("no workflow steps: add some with add_workflow_step(name, action)")
        return await run_workflow(self, list(self.workflow), input, self.emitter(on_event), uuid.uuid4().hex[:12],
                                  on_event)

    def execute_workflow(self, input: Any) -> WorkflowResult:
        return run_sync(self.execute_workflow_async(input), "await agent.execute_workflow_async(...)")

    # ----------------------------------------------------------------- batches
    async def batch_run_async(
        self,
        messages: Iterable[str],
        max_concurrency: int | str | None = "auto",
        return_exceptions: bool = True,
        *,
        on_event: EventCallback | None = None,
        model: Model | str | None = None,
        system: str | None = None,
        tools: Iterable[Any] | None = None,
        mode: ChatMode | str | None = None,
    ) -> list[RunResult | BaseException]:
        """Parallel chat turns, each on its own copy of the current history; full results, input order.

        The agent's own history is unchanged. ``max_concurrency="auto"`` (or None): paced by the agent's
        limiter (adaptive by default); an integer is a fixed bound on items, which can only lower the agent's.
        ``model``/``system``/``tools``/``mode`` apply to this batch only.
        """
        items = list(messages)
        settings = self._batch_settings(model, system, tools, mode)
        emit = self.emitter(on_event)
        batch_id = uuid.uuid4().hex[:12]
        started = time.perf_counter()
        emit(BatchStarted(batch_id, messages=tuple(items), mode="parallel"))
        gate = asyncio.Semaphore(max_concurrency) if isinstance(max_concurrency, int) else None
        snapshot = list(self.messages)
        results: list[RunResult | BaseException | None] = [None] * len(items)

        async def one(index: int) -> None:
            async with gate if gate is not None else contextlib.nullcontext():
                results[index] = await self._batch_item(batch_id, index, items[index], settings, list(snapshot),
                                                        emit, on_event)
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
            emit(BatchFinished(batch_id, ok=len(items) - failed, failed=failed,
                               duration=time.perf_counter() - started))
        return [r for r in results if r is not None]

    async def batch_chat_async(
        self,
        messages: Iterable[str],
        max_concurrency: int | str | None = "auto",
        return_exceptions: bool = True,
        *,
        on_event: EventCallback | None = None,
        **overrides: Any,
    ) -> list[str | BaseException]:
        """Parallel chat turns (see :meth:`batch_run_async`); answers (or exceptions) in input order."""
        results = await self.batch_run_async(messages, max_concurrency, return_exceptions, on_event=on_event,
                                             **overrides)
        return [r if isinstance(r, BaseException) else r.final_output for r in results]

    # ----------------------------------------------------------------- maps (menglong_magic/maps/run.py)
    async def map_async(
        self,
        inputs: Any,
        prompt: str | None = None,
        *,
        output_type: Any = None,
        journal: Any = None,
        max_concurrency: int | str | None = "auto",
        return_exceptions: bool = True,
        on_event: EventCallback | None = None,
        executor: Any = "local",
        **overrides: Any,
    ) -> MapResult:
        """One isolated run per input (strings; dicts, DataFrame rows or a Series formatted into ``prompt``),
        in parallel; outputs (or each item's exception) in input order, in a :class:`MapResult`.

        ``journal="runs.sqlite"`` commits every finished item at once; running the same map again requests
        only what the journal lacks. Identical prompts are requested once. ``output_type`` asks for typed
        answers. ``max_concurrency="auto"`` follows the agent's adaptive limiter; an integer is a fixed bound.
        ``model``/``system``/``tools``/``mode`` and model settings apply to this map only.
        ``executor="ray"`` (or a ``RayExecutor``) runs the items on Ray workers; the journal, events and
        result stay here.
        """
        return await map_async(self, inputs, prompt, output_type=output_type, journal=journal,
                               max_concurrency=max_concurrency, return_exceptions=return_exceptions,
                               on_event=on_event, executor=executor, **overrides)

    def map(self, inputs: Any, prompt: str | None = None, **kwargs: Any) -> MapResult:
        """Blocking :meth:`map_async` (not inside a running loop: use ``await agent.map_async``)."""
        return run_sync(self.map_async(inputs, prompt, **kwargs), "await agent.map_async(...)")

    async def sequential_run_async(
        self,
        messages: Iterable[str],
        stop_on_error: bool = True,
        *,
        on_event: EventCallback | None = None,
        model: Model | str | None = None,
        system: str | None = None,
        tools: Iterable[Any] | None = None,
        mode: ChatMode | str | None = None,
    ) -> list[RunResult | BaseException]:
        """Chat turns one after another on the shared history: later messages see earlier answers.

        A failed turn yields its exception; with ``stop_on_error`` the remaining messages are skipped
        (and not in the returned list).
        """
        items = list(messages)
        settings = self._batch_settings(model, system, tools, mode)
        emit = self.emitter(on_event)
        batch_id = uuid.uuid4().hex[:12]
        started = time.perf_counter()
        emit(BatchStarted(batch_id, messages=tuple(items), mode="sequential"))
        results: list[RunResult | BaseException] = []
        try:
            for index, message in enumerate(items):
                outcome = await self._batch_item(batch_id, index, message, settings, None, emit, on_event)
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

    async def sequential_chat_async(
        self, messages: Iterable[str], stop_on_error: bool = True, *, on_event: EventCallback | None = None,
        **overrides: Any,
    ) -> list[str | BaseException]:
        """Sequential chat turns (see :meth:`sequential_run_async`); answers or exceptions."""
        results = await self.sequential_run_async(messages, stop_on_error, on_event=on_event, **overrides)
        return [r if isinstance(r, BaseException) else r.final_output for r in results]

    def _batch_settings(self, model: Any, system: Any, tools: Any, mode: Any) -> RunSettings:
        settings = self.settings(model=model, system=system, tools=tools, mode=mode)
        if settings.mode is ChatMode.WORKFLOW:  # a batch of workflow inputs is not a thing yet: chat them
            settings = self.settings(model=model, system=system, tools=tools,
                                     mode=ChatMode.AUTO if settings.tools else ChatMode.NORMAL)
        return settings

    async def _batch_item(
        self,
        batch_id: str,
        index: int,
        message: str,
        settings: RunSettings,
        history: list[dict[str, Any]] | None,
        emit: Callable[[Event], None],
        on_event: EventCallback | None,
    ) -> RunResult | BaseException:
        item_id = f"{batch_id}-{index}"
        emit(BatchItemStarted(batch_id, index=index, message=message, item_run_id=item_id))
        started = time.perf_counter()
        try:
            result = await self.run_turn(message, settings, kind="batch_item", on_event=on_event, messages=history,
                                      run_id=item_id)
        except asyncio.CancelledError:
            emit(BatchItemFinished(batch_id, index=index, status="cancelled",
                                   duration=time.perf_counter() - started, result=None, error="cancelled"))
            raise
        duration = time.perf_counter() - started
        if result.stop_reason in ("error", "cancelled"):
            exc = result.failure() if result.stop_reason == "error" else asyncio.CancelledError()
            emit(BatchItemFinished(batch_id, index=index, status=result.stop_reason, duration=duration,
                                   result=None, error=result.error or result.stop_reason))
            return exc
        emit(BatchItemFinished(batch_id, index=index, status="ok", duration=duration,
                               result=result.final_output, error=result.error))
        return result

    # ----------------------------------------------------------------- toolsets (MCP servers)
    def add_toolset(self, toolset: Toolset) -> Toolset:
        """Add a tool source (e.g. an MCP server); its tools join every AUTO run from the next one on."""
        if not isinstance(toolset, Toolset):
            raise TypeError(f"not a toolset (needs name, list_tools(), aclose()): {toolset!r}")
        self.toolsets.append(toolset)
        return toolset

    add_mcp_server = add_toolset

    async def remove_toolset(self, toolset: Toolset | str) -> None:
        """Remove a tool source (by object or name) and close it."""
        found = [t for t in self.toolsets if t is toolset or t.name == toolset]
        if not found:
            raise KeyError(f"no toolset {toolset!r}")
        for t in found:
            self.toolsets.remove(t)
            await t.aclose()

    async def aclose(self) -> None:
        """Close this agent's tool sources (MCP servers). The agent stays usable: they reopen on use."""
        for toolset in list(self.toolsets):
            await toolset.aclose()

    async def __aenter__(self) -> ChatAgent:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ----------------------------------------------------------------- context and tools
    def clear_context(self) -> None:
        """Forget the conversation; the system prompt and the tools stay."""
        self.messages.clear()

    async def clear_context_async(self) -> None:
        self.clear_context()

    def get_context_summary(self) -> ContextSummary:
        """Messages by role, tool calls, tokens used (last run) and the last exchange."""
        return ContextSummary.of(self)

    async def get_context_summary_async(self) -> ContextSummary:
        return self.get_context_summary()

    def register_tool(self, name: str, func: Callable[..., Any], description: str | None = None) -> Tool:
        """Add (or replace, with a warning) a tool under ``name``."""
        if name in self.tools:
            warnings.warn(f"tool {name!r} was already registered; replacing it", stacklevel=2)
        t = as_tool(func, name=name, description=description)
        self.tools[t.name] = t
        return t

    def register_tools_from_functions(self, *functions: Any) -> list[Tool]:
        """Register functions, ``@tool`` functions and Tools, or lists/tuples of them (mixed)."""
        return [self.register_tool(as_tool(f).name, f) for f in flatten_tools(list(functions))]

    async def register_tool_async(self, name: str, func: Callable[..., Any], description: str | None = None) -> Tool:
        return self.register_tool(name, func, description)

    async def register_tools_from_functions_async(self, *functions: Any) -> list[Tool]:
        return self.register_tools_from_functions(*functions)

    def remove_tool(self, name: str) -> None:
        """Remove a tool; KeyError if there is none by that name."""
        del self.tools[name]

    # ----------------------------------------------------------------- sync twins
    def batch_chat(self, messages: Iterable[str], max_concurrency: int | str | None = "auto",
                   return_exceptions: bool = True, **overrides: Any) -> list[str | BaseException]:
        return run_sync(self.batch_chat_async(messages, max_concurrency, return_exceptions, **overrides),
                        "await agent.batch_chat_async(...)")

    def sequential_chat(self, messages: Iterable[str], stop_on_error: bool = True,
                        **overrides: Any) -> list[str | BaseException]:
        return run_sync(self.sequential_chat_async(messages, stop_on_error, **overrides),
                        "await agent.sequential_chat_async(...)")

    def chat(self, message: str, **kwargs: Any) -> str:
        """Blocking :meth:`chat_async` (not inside a running loop: use ``await agent.chat_async``)."""
        return run_sync(self.chat_async(message, **kwargs), "await agent.chat_async(...)")

    def run(self, task: str, max_iterations: int | None = None, timeout: float | None = None,
            **kwargs: Any) -> RunResult:
        """Blocking :meth:`arun` (not inside a running loop: use ``await agent.arun``)."""
        return run_sync(self.arun(task, max_iterations, timeout, **kwargs), "await agent.arun(...)")

    # ----------------------------------------------------------------- turns
    async def run_turn(
        self,
        message: str,
        settings: RunSettings,
        *,
        kind: str = "chat",
        on_event: EventCallback | None = None,
        messages: list[dict[str, Any]] | None = None,
        run_id: str | None = None,
    ) -> RunResult:
        """One message through the loop with resolved ``settings`` (see :meth:`settings`), committed to
        ``messages`` (default: this agent's history, after earlier turns of the conversation). The building
        block of every entry point: batches and maps pass their own ``messages``."""
        return await Turn(self).run(message, settings, kind=kind, on_event=on_event, messages=messages,
                                    run_id=run_id)

    def emitter(self, on_event: EventCallback | None) -> Callable[[Event], None]:
        """The function a run emits its events with: to ``on_event`` (if given), then to the agent's subscribers."""
        bus = self.events
        if on_event is None:
            return bus.emit

        def emit(event: Event) -> None:
            dispatch(on_event, event)
            bus.emit(event)

        return emit
