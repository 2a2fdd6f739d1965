"""ChatAgent: the facade (defaults, entry points, tools, workflows); the loop is :mod:`.turn`, batches are
:mod:`.batch`, the run options and their resolution are :mod:`.options`.

No IPython or ipywidgets import anywhere in this package."""

from __future__ import annotations

import asyncio
import itertools
import os
import uuid
import warnings
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..events import Event, EventBus, EventCallback, EventSubscription, dispatch
from ..loopcache import PerLoop
from ..maps.executors import resolve_executor
from ..maps.run import MapResult, map_async
from ..models import Model, resolve_model
from ..store import AgentPersistence, Store
from ..tools.base import Tool, Toolset, as_tool, collect_tools, flatten_tools
from ..usage import UsageLimits
from .approval import Approver
from .batch import run_batch, run_sequential
from .context import ContextSummary
from .limiter import AdaptiveLimiter, endpoint_key
from .options import RunOptions, check_options, merge_options, resolve_settings
from .result import RunResult
from .settings import ChatMode, RunSettings
from .sync import run_sync
from .turn import RunState, Turn, TurnLine
from .workflow import WorkflowResult, WorkflowStep, run_workflow

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack is 3.11+


def _answer(result: RunResult | BaseException) -> Any:
    """A batch item's answer: the typed output when one was asked for, else the text (or the exception)."""
    if isinstance(result, BaseException):
        return result
    return result.output if result.output is not None else result.final_output


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

    ``session="analysis"`` saves every committed turn to a store (``store=``: a path or a
    :class:`~menglong_magic.store.Store`; default ``MENGLONG_STORE``, else the user's data directory) and starts
    from the turns saved earlier under that name, in this process or another (see :mod:`menglong_magic.store`).
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
        session: str | None = None,
        store: Store | str | os.PathLike[str] | None = None,
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
        self._generated_name = None if name else self.name
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
        #: Saved turns of ``session`` and the run log (:mod:`menglong_magic.store`); off unless a session is
        #: named or a store is given or configured (``MENGLONG_STORE``).
        self.persistence = AgentPersistence(session, store)
        self.messages: list[dict[str, Any]] = self.persistence.load()  # the conversation, without the system prompt
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
    def settings(self, **options: Unpack[RunOptions]) -> RunSettings:
        """This agent's defaults with a run's options (None or absent: the default; ``system=""`` means none).

        The one place defaults are settled (:func:`~menglong_magic.agent.options.resolve_settings`)."""
        return resolve_settings(self, options, where="settings()")

    @property
    def named(self) -> bool:
        """Whether the name was given (``name=``, or set later), not generated ("agent-3"): views of a run
        started by a magic's ``-a VARIABLE`` are titled with the variable's name when the agent has none."""
        return self.name != self._generated_name

    def fork(self, name: str | None = None) -> ChatAgent:
        """A new agent with a copy of this history and the same model, tools and defaults.

        For independent parallel work (a web request, a what-if branch): its turns do not wait for this
        agent's, and nothing it does changes this agent. It shares this agent's concurrency limit.
        """
        twin = ChatAgent.__new__(ChatAgent)
        twin.__dict__.update(self.__dict__)
        twin.name = name or f"{self.name}-fork-{next(self._names)}"
        twin._generated_name = None if name else twin.name  # noqa: SLF001 (a ChatAgent: this class's own)
        twin.tools = dict(self.tools)
        twin.model_settings = dict(self.model_settings)
        twin.messages = [dict(m) for m in self.messages]
        twin.workflow = list(self.workflow)
        twin.toolsets = list(self.toolsets)  # shared servers: closing them is the original agent's job
        twin.events = EventBus()
        twin.last_result = None
        twin.turns = TurnLine()
        twin.persistence = self.persistence.detached()  # its runs are logged; its turns are not the session's
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
        sem = self._limiters.get()
        if isinstance(sem, AdaptiveLimiter) and sem.endpoint is None and self._model is not None:
            sem.bind(endpoint_key(self._model))  # the default model once resolved (never resolved just for this)
        return sem

    def _new_limiter(self) -> asyncio.Semaphore | AdaptiveLimiter:
        return AdaptiveLimiter() if self.max_concurrency == "auto" else asyncio.Semaphore(self.max_concurrency)

    def add_tool(self, obj: Any, name: str | None = None, description: str | None = None) -> Tool:
        t = as_tool(obj, name=name, description=description)
        self.tools[t.name] = t
        return t

    # ----------------------------------------------------------------- public async API
    # Every entry point takes the same run options (menglong_magic/agent/options.py), nothing else.
    async def chat_async(self, message: str, *, on_event: EventCallback | None = None,
                         **options: Unpack[RunOptions]) -> Any:
        """One user turn; returns the answer text (or the typed output). In AUTO mode tools run until the
        model answers. In WORKFLOW mode the message is the workflow's input and the last step's output is
        returned. The options apply to this turn only.
        """
        settings = resolve_settings(self, options, where="chat_async()")
        if settings.mode is ChatMode.WORKFLOW:
            workflow = await self.execute_workflow_async(message, on_event=on_event,
                                                         **{**options, "mode": None})  # type: ignore[typeddict-item]
            failed = next((s for s in workflow.steps if s.status == "error"), None)
            if failed is not None:
                raise RuntimeError(f"workflow step {failed.name!r} failed: {failed.error}")
            return str(workflow.output)
        result = await self.run_turn(message, settings, kind="chat", on_event=on_event)
        result.raise_for_error()
        if settings.output is not None:
            if result.stop_reason != "completed":
                raise ValueError(f"no {settings.output.name} answer: {result.error or result.stop_reason}")
            return result.output
        return result.final_output

    async def arun(self, task: str, max_iterations: int | None = None, timeout: float | None = None, *,
                   on_event: EventCallback | None = None, **options: Unpack[RunOptions]) -> RunResult:
        """An autonomous task (AUTO mode unless ``mode`` says otherwise); always returns a RunResult.

        The options apply to this run only. Cancelling the awaiting task cancels the run (the history stays
        valid) and raises CancelledError as usual; :meth:`cancel` instead makes the run return a "cancelled"
        result.
        """
        options = merge_options(options, max_iterations=max_iterations, timeout=timeout)  # type: ignore[assignment]
        settings = resolve_settings(self, options, where="arun()", default_mode=ChatMode.AUTO)
        if settings.mode is ChatMode.WORKFLOW:
            raise ValueError("arun runs a task; for workflows use execute_workflow_async(input)")
        return await self.run_turn(task, settings, kind="run", on_event=on_event)

    async def chat_result_async(self, message: str, *, on_event: EventCallback | None = None,
                                **options: Unpack[RunOptions]) -> RunResult:
        """Like :meth:`chat_async` but returns the full RunResult (used by the magics)."""
        settings = resolve_settings(self, options, where="chat_result_async()")
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

    async def execute_workflow_async(self, input: Any, *, on_event: EventCallback | None = None,
                                     **options: Unpack[RunOptions]) -> WorkflowResult:
        """Run the steps in order on ``input``; each step's output, error and duration are in the result.

        The run options apply to the prompt steps (chat turns; AUTO when there are tools, else NORMAL).
        """
        check_options(options, "execute_workflow_async()")
        if options.get("mode") == ChatMode.WORKFLOW:
            raise ValueError("a workflow's prompt steps are chat turns: mode='normal' or 'auto'")
        if not self.workflow:
            raise ValueError("no workflow steps: add some with add_workflow_step(name, action)")
        return await run_workflow(self, list(self.workflow), input, self.emitter(on_event), uuid.uuid4().hex[:12],
                                  on_event, options)

    def execute_workflow(self, input: Any, **options: Unpack[RunOptions]) -> WorkflowResult:
        return run_sync(self.execute_workflow_async(input, **options), "await agent.execute_workflow_async(...)")

    # ----------------------------------------------------------------- batches (menglong_magic/agent/batch.py)
    async def batch_run_async(self, messages: Iterable[str], max_concurrency: int | str | None = "auto",
                              return_exceptions: bool = True, *, on_event: EventCallback | None = None,
                              **options: Unpack[RunOptions]) -> list[RunResult | BaseException]:
        """Parallel chat turns, each on its own copy of the current history; full results, input order.

        The agent's own history is unchanged. ``max_concurrency="auto"`` (or None): paced by the agent's
        limiter (adaptive by default); an integer is a fixed bound on items, which can only lower the agent's.
        The run options apply to every item (WORKFLOW mode chats: AUTO with tools, else NORMAL).
        """
        settings = resolve_settings(self, options, where="batch_run_async()", chat_workflow=True)
        return await run_batch(self, list(messages), settings, max_concurrency, return_exceptions, on_event)

    async def batch_chat_async(self, messages: Iterable[str], max_concurrency: int | str | None = "auto",
                               return_exceptions: bool = True, *, on_event: EventCallback | None = None,
                               **options: Unpack[RunOptions]) -> list[Any]:
        """Parallel chat turns (see :meth:`batch_run_async`); answers (or exceptions) in input order."""
        results = await self.batch_run_async(messages, max_concurrency, return_exceptions, on_event=on_event,
                                             **options)
        return [_answer(r) for r in results]

    async def sequential_run_async(self, messages: Iterable[str], stop_on_error: bool = True, *,
                                   on_event: EventCallback | None = None,
                                   **options: Unpack[RunOptions]) -> list[RunResult | BaseException]:
        """Chat turns one after another on the shared history: later messages see earlier answers.

        A failed turn yields its exception; with ``stop_on_error`` the remaining messages are skipped
        (and not in the returned list). The run options apply to every turn.
        """
        settings = resolve_settings(self, options, where="sequential_run_async()", chat_workflow=True)
        return await run_sequential(self, list(messages), settings, stop_on_error, on_event)

    async def sequential_chat_async(self, messages: Iterable[str], stop_on_error: bool = True, *,
                                    on_event: EventCallback | None = None,
                                    **options: Unpack[RunOptions]) -> list[Any]:
        """Sequential chat turns (see :meth:`sequential_run_async`); answers or exceptions."""
        results = await self.sequential_run_async(messages, stop_on_error, on_event=on_event, **options)
        return [_answer(r) for r in results]

    # ----------------------------------------------------------------- maps (menglong_magic/maps/run.py)
    async def map_async(self, inputs: Any, prompt: str | None = None, *, journal: Any = None,
                        max_concurrency: int | str | None = "auto", return_exceptions: bool = True,
                        on_event: EventCallback | None = None, executor: Any = "local",
                        **options: Unpack[RunOptions]) -> MapResult:
        """One isolated run per input (strings; dicts, DataFrame rows or a Series formatted into ``prompt``),
        in parallel; outputs (or each item's exception) in input order, in a :class:`MapResult`.

        ``journal="runs.sqlite"`` commits every finished item at once; running the same map again requests
        only what the journal lacks. Identical prompts are requested once. ``output_type`` asks for typed
        answers. ``max_concurrency="auto"`` follows the agent's adaptive limiter; an integer is a fixed bound.
        The run options apply to this map only. ``executor="ray"`` (or a ``RayExecutor``) runs the items on
        Ray workers; the journal, events and result stay here.
        """
        return await map_async(self, inputs, prompt, journal=journal, max_concurrency=max_concurrency,
                               return_exceptions=return_exceptions, on_event=on_event,
                               executor=resolve_executor(executor), **options)

    def map(self, inputs: Any, prompt: str | None = None, **kwargs: Any) -> MapResult:
        """Blocking :meth:`map_async` (not inside a running loop: use ``await agent.map_async``)."""
        return run_sync(self.map_async(inputs, prompt, **kwargs), "await agent.map_async(...)")


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
    def clear_context(self) -> bool:
        """Forget the conversation; the system prompt and the tools stay. A stored session keeps its turns (a new
        process starts after this point); returns True if there was one (``store.forget`` deletes it)."""
        self.messages.clear()
        return self.persistence.reset()

    @property
    def session(self) -> str | None:
        """The name this conversation is saved under (None: not saved)."""
        return self.persistence.session

    async def clear_context_async(self) -> bool:
        return self.clear_context()

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
                   return_exceptions: bool = True, **options: Unpack[RunOptions]) -> list[Any]:
        return run_sync(self.batch_chat_async(messages, max_concurrency, return_exceptions, **options),
                        "await agent.batch_chat_async(...)")

    def sequential_chat(self, messages: Iterable[str], stop_on_error: bool = True,
                        **options: Unpack[RunOptions]) -> list[Any]:
        return run_sync(self.sequential_chat_async(messages, stop_on_error, **options),
                        "await agent.sequential_chat_async(...)")

    def chat(self, message: str, **options: Any) -> Any:
        """Blocking :meth:`chat_async` (not inside a running loop: use ``await agent.chat_async``)."""
        return run_sync(self.chat_async(message, **options), "await agent.chat_async(...)")

    def run(self, task: str, max_iterations: int | None = None, timeout: float | None = None,
            **options: Any) -> RunResult:
        """Blocking :meth:`arun` (not inside a running loop: use ``await agent.arun``)."""
        return run_sync(self.arun(task, max_iterations, timeout, **options), "await agent.arun(...)")


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
