"""``%%agent`` and ``%agent_run`` (also ``%agent_reset``, ``%agent_tools``): run a ChatAgent on the kernel's own
event loop, with a live view.

How a magic's coroutine runs from a cell (the rewrite to ``await``, the blocking fallback, ``--bg``) is
:mod:`.cells`; the flags and how they become run options are :mod:`.options`.

A cell behaves like a Python cell: an interrupt ends it as an interrupted cell (an error reply, so Run
All stops) after the run was cancelled and its partial result saved; the cell shows the run's view and
no ``Out[n]`` repeating the answer (the value is in ``_agent_last`` or ``-o VAR``, or ``x = %agent_run``).
The task text and the cell body reach the model exactly as typed; ``-i`` interpolates ``{name}`` from the
namespace.
"""

from __future__ import annotations

import asyncio
import contextvars
import ctypes
import json
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from traitlets import Bool, CaselessStrEnum, Float, Int, Unicode, observe

from .. import events as ev
from ..agent import ApprovalDecision, ApprovalRequest, ChatAgent, ChatMode, RunResult
from ..markup import terminal_safe
from ..store import set_default_store
from ..ui.panel import make_view
from . import kernel_status
from .cells import AgentInterrupted, AgentRunFailed, AgentTask, await_shielded, heartbeat, run_blocking
from .options import (
    build_options,
    configured,
    help_flag,
    interpolate,
    named_agent,
    namespace_tools,
    parse_line,
    run_arguments,
    sent_names,
)

__all__ = ["AgentInterrupted", "AgentMagics", "AgentRunFailed", "AgentTask", "prompt_approver"]


#: Said in the cell of a run whose approval waits for a prompt still open (one that could not be stopped).
EARLIER_PROMPT_OPEN = ("an earlier approval prompt is still open: answer it (the answer is discarded) and this "
                       "run's prompt follows")


class StdinPrompts:
    """One stdin prompt at a time, in a worker thread (the loop and the panel keep going while a person reads).

    ipykernel's ``input()`` polls the kernel's one stdin socket until a reply comes: a prompt whose run was
    interrupted would keep polling, its box is gone once its cell is run again, and a second prompt polling the
    same socket beside it races it for the reply (the cell hung). So a prompt whose run is cancelled is ended
    with a KeyboardInterrupt raised in its thread, which ipykernel's polling loop is written to receive; and a
    new prompt waits until the old one has ended (saying so, should that take long: a terminal's ``input()``
    only sees the interrupt after the next line is typed).
    """

    def __init__(self) -> None:
        self._open = threading.Lock()  # held while a prompt's input() runs
        self._guard = threading.Lock()  # orders ending a prompt against its thread leaving input()

    async def ask(self, text: str) -> str:
        said = False
        waited = 0
        while not self._open.acquire(blocking=False):
            waited += 1
            if not said and waited > 5:  # an ended prompt leaves within a few ms; longer: one nobody could end
                print(EARLIER_PROMPT_OPEN, flush=True)
                said = True
            await asyncio.sleep(0.1 if said else 0.01)
        context = contextvars.copy_context()  # ipykernel reads the cell that asks from its context
        asking: dict[str, int] = {}

        def blocking() -> str:
            try:
                try:
                    with self._guard:
                        asking["thread"] = threading.get_ident()
                    answer = context.run(input, text)
                except KeyboardInterrupt:  # ended below: its run is gone, nobody reads this answer
                    answer = ""
                with self._guard:
                    asking.pop("thread", None)
                return answer
            finally:
                self._open.release()

        try:
            return await asyncio.get_running_loop().run_in_executor(None, blocking)
        except asyncio.CancelledError:
            with self._guard:
                thread = asking.get("thread")
                if thread is not None:
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread),
                                                               ctypes.py_object(KeyboardInterrupt))
            raise


_stdin_prompts = StdinPrompts()


async def prompt_approver(request: ApprovalRequest) -> ApprovalDecision:
    """Ask on stdin: y approves; n (or nothing) denies; anything else denies with that text as the reason."""
    arguments = request.arguments if isinstance(request.arguments, str) else json.dumps(request.arguments)
    answer = (await _stdin_prompts.ask(terminal_safe(f"approve {request.tool_name}({arguments})? [y/N/reason] "))
              ).strip()
    if answer.lower() in ("y", "yes"):
        return ApprovalDecision(True, None, "prompt")
    if answer.lower() in ("", "n", "no"):
        return ApprovalDecision(False, None, "prompt")
    return ApprovalDecision(False, answer, "prompt")


@magics_class
class AgentMagics(Magics):
    """Chat with and run agents from cells. Defaults are configurable: ``%config AgentMagics.model = ...``."""

    model = Unicode(None, allow_none=True, help="Model of the default agent (name, 'local' or 'offline').").tag(
        config=True)
    system = Unicode(None, allow_none=True, help="System prompt of the default agent.").tag(config=True)
    mode = CaselessStrEnum(["normal", "auto", "workflow"], default_value="auto",
                           help="Mode of the default agent for %%agent cells.").tag(config=True)
    max_iterations = Int(10, help="Iteration cap for runs started by the magics.").tag(config=True)
    timeout = Float(None, allow_none=True, help="Default timeout in seconds for runs (None: no timeout).").tag(
        config=True)
    request_timeout = Float(None, allow_none=True,
                            help="Timeout in seconds of each model request (None: MENGLONG_REQUEST_TIMEOUT, "
                                 "else the model's own).").tag(config=True)
    max_retries = Int(None, allow_none=True,
                      help="Retries of a transient model error (None: MENGLONG_MAX_RETRIES, else the model's "
                           "own).").tag(config=True)
    approval_timeout = Float(None, allow_none=True,
                             help="Seconds to wait for a tool-call approval before denying it (None: no limit; "
                                  "where nobody can be asked, e.g. nbclient, calls are denied at once).").tag(
        config=True)
    approval_via = CaselessStrEnum(["auto", "panel", "prompt"], default_value="auto",
                                   help="How a person approves tool calls: 'panel' buttons, a stdin 'prompt', or "
                                        "'auto' (the panel where it is shown, else the prompt). Use 'prompt' in "
                                        "front ends that hold widget clicks until a blocking cell ends.").tag(
        config=True)
    show_panel = Bool(True, help="Show the live widget panel (False: a text view).").tag(config=True)
    frontend = CaselessStrEnum(["auto", "widgets", "text"], default_value="auto",
                               help="View for runs: 'widgets' (live panel), 'text' (progress lines), or 'auto' "
                                    "(the panel when the front end shows widgets).").tag(config=True)
    panel_update_interval = Float(0.1, help="Seconds between panel updates (they are coalesced).").tag(config=True)
    # Persistence (menglong_magic/store.py, %agent_history, %agent_log).
    store = Unicode(None, allow_none=True,
                    help="SQLite file for saved sessions and the run log (None: MENGLONG_STORE, else the user's "
                         "data directory). Setting it turns the run log on for every agent.").tag(config=True)
    session = Unicode(None, allow_none=True,
                      help="Save the default agent's conversation under this name, and continue it in later "
                           "kernels (None: not saved).").tag(config=True)

    @observe("store")
    def _store_changed(self, change: Any) -> None:
        set_default_store(change["new"] or None)
    kernel_tools = Bool(False, help="Every run gets the kernel tools, as with --kernel (variables, run code, "
                                    "last error, propose a cell).").tag(config=True)
    run_code = CaselessStrEnum(["ask", "allow", "never"], default_value="ask",
                               help="The kernel tools' run_code: 'ask' (approve each snippet; denied where nobody "
                                    "can be asked), 'allow' (no approval) or 'never' (not offered).").tag(config=True)

    def __init__(self, shell: Any = None, **kwargs: Any):
        super().__init__(shell=shell, **kwargs)
        self._default_agent: ChatAgent | None = None
        self._session_agents: dict[str, ChatAgent] = {}  # the per-kernel agent of each stored session
        self._session_specs: dict[str, str | None] = {}
        self._default_model_spec: str | None = None
        self.last_result: Any = None
        self.background: list[AgentTask] = []

    # ------------------------------------------------------------------ magics
    @help_flag
    @magic_arguments()
    @run_arguments
    @argument("--bg", action="store_true", help="run in the background and return a handle at once")
    @argument("--reset", action="store_true", help="clear the agent's history first")
    @argument("--batch", action="store_true", help="each non-empty line is one message, run in parallel")
    @argument("--sequential", action="store_true", help="each non-empty line is one message, one after another")
    @no_var_expand
    @cell_magic
    def agent(self, line: str, cell: str) -> Any:
        """Send the cell body as one chat message to an agent."""
        return run_blocking(self.execute("cell", line, cell))

    @help_flag
    @magic_arguments()
    @run_arguments
    @argument("--bg", action="store_true", help="run in the background and return a handle at once")
    @argument("--reset", action="store_true", help="clear the agent's history first")
    @argument("task", nargs="*", help="the task (the rest of the line, as typed)")
    @no_var_expand
    @line_magic
    def agent_run(self, line: str) -> Any:
        """Run an autonomous task: the agent calls tools until it answers."""
        return run_blocking(self.execute("line", line, None))

    @help_flag
    @magic_arguments()
    @argument("-a", "--agent", help="name of a ChatAgent in the namespace (default: the per-kernel agent)")
    @line_magic
    def agent_reset(self, line: str) -> None:
        """Clear an agent's conversation (system prompt and tools stay)."""
        args = parse_argstring(self.agent_reset, line)
        agent = self.named_agent(args.agent) if args.agent else self._kernel_agent()
        kept = agent.clear_context() if agent is not None else False
        note = ""
        if agent is not None and agent.session is not None:
            note = (f"; the stored session {agent.session!r} was kept (a new kernel starts from here; "
                    f"%agent_history forget {agent.session} deletes it)" if kept else
                    f"; nothing was stored for session {agent.session!r}")
        print(f"{agent.name if agent else 'agent'}: history cleared{note}")

    @help_flag
    @magic_arguments()
    @argument("-a", "--agent", help="name of a ChatAgent in the namespace")
    @line_magic
    def agent_tools(self, line: str) -> None:
        """List the tools an agent would get (default agent: every @tool function in the namespace)."""
        args = parse_argstring(self.agent_tools, line)
        agent = self.named_agent(args.agent) if args.agent else self._default_agent
        tools = self.named_agent(args.agent).tools if args.agent else namespace_tools(self.shell.user_ns)
        toolsets = list(agent.toolsets) if agent is not None else []
        if not tools and not toolsets and not self.kernel_tools:
            print("no tools (decorate functions with @tool)")
        sent = sent_names(tools)
        for name, t in sorted(tools.items()):
            kind = "async" if t.is_async else "sync"
            sent_as = f" [sent to the model as {sent[name]!r}]" if sent[name] != name else ""
            print(terminal_safe(f"{name} ({kind}){sent_as}: "
                                f"{t.description.splitlines()[0] if t.description else ''}"))
        if self.kernel_tools:
            print(f"+ the kernel tools (AgentMagics.kernel_tools; run_code: {self.run_code}): list_variables, "
                  "inspect_variable, run_code, last_error, propose_cell")
        for toolset in toolsets:  # listed when a run starts; %agent_mcp list shows their tools
            state = getattr(toolset, "state", "")
            print(f"+ the tools of {toolset.name!r} ({type(toolset).__name__}{', ' + state if state else ''}; "
                  f"see %agent_mcp list)")

    # ------------------------------------------------------------------ execution
    async def execute_magic(self, name: str, line: str, cell: str | None) -> Any:
        """What the cell runner awaits for ``%%agent`` and ``%agent_run``."""
        return await self.execute("cell" if name == "agent" else "line", line, cell)

    def agent_and_options(self, args: Any) -> tuple[ChatAgent, dict[str, Any]]:
        """The agent ``-a`` names (or the per-kernel one: of ``--session NAME``, else of the configured session,
        else the default) and this run's options from the flags and the config.

        Nothing here writes to the agent: ``-m/-s/-t/--mode`` and the config are this run's options. The session
        is the agent's, not a run option: it picks which conversation the run continues and saves to.
        """
        session = getattr(args, "session", None)
        if args.agent and session:
            raise UsageError("-a and --session: give that agent its session in Python (ChatAgent(session=...))")
        # A configuration error (a refused URL, a missing setting or cassette) is one short UsageError here,
        # before the run starts: not a failed run with a traceback.
        agent = self.named_agent(args.agent) if args.agent else configured(lambda: self.default_agent(session))
        per_kernel = agent is self._default_agent or agent in self._session_agents.values()
        options = configured(lambda: build_options(args, self, self.shell.user_ns, agent, default_agent=per_kernel))
        if "model" not in options:  # the agent's own model serves this run: resolved now (-m never resolves it)
            configured(lambda: agent.model)
        return agent, options

    async def execute(self, kind: str, line: str, cell: str | None) -> Any:
        """Parse, pick the agent and this run's options, run with a view; shared by every path."""
        func = self.agent if kind == "cell" else self.agent_run
        args, task_text = parse_line(func.parser, line, rest=kind == "line", expand=self.shell.var_expand)
        loop = asyncio.get_running_loop()
        agent, options = self.agent_and_options(args)
        if args.reset:
            agent.clear_context()
        starter, title, single_run = self._starter(args, kind, cell, task_text, agent, options)
        holder: dict[str, asyncio.Task[Any]] = {}
        outcome_of_run: dict[str, Any] = {}

        def stop() -> None:  # thread-safe: the Stop click may arrive on a comm thread
            task = holder.get("task")
            if task is not None:
                loop.call_soon_threadsafe(task.cancel)

        view = make_view(
            title=title,
            widgets=self.widgets_available() and self.show_panel and not args.quiet,
            on_stop=stop,
            update_interval=self.panel_update_interval,
            compact=args.quiet,
        )
        if agent.approve is None:
            approver = self._approver(view, background=args.bg)
            if approver is not None:
                options["approve"] = approver  # read when the run starts, after the view exists

        def on_event(event: ev.Event) -> None:
            # The result of this cell's own run, even if it ends by cancellation (then arun raises).
            if isinstance(event, ev.RunStarted) and "run_id" not in outcome_of_run:
                outcome_of_run["run_id"] = event.run_id
            elif isinstance(event, ev.RunFinished) and event.run_id == outcome_of_run.get("run_id"):
                outcome_of_run["result"] = event.result
            view.handle(event)

        # A blocking cell: the kernel's status stays "busy" although the panel's comm traffic settles.
        cell_ended = (lambda: None) if args.bg else kernel_status.cell_started(self.shell)
        view.show()
        task = loop.create_task(starter(on_event))
        holder["task"] = task

        async def finish() -> Any:
            beat = None if args.bg else loop.create_task(heartbeat())
            try:
                outcome, interrupted = await await_shielded(task)
                if outcome is None and single_run:
                    outcome = outcome_of_run.get("result")
            finally:
                if beat is not None:
                    beat.cancel()
                view.finish()
                cell_ended()
            return self._deliver(args, outcome, interrupted)

        if args.bg:
            bg = loop.create_task(finish())
            handle = AgentTask(bg, loop, title, run=task)
            self.background.append(handle)
            bg.add_done_callback(lambda _t: self.background.remove(handle) if handle in self.background else None)
            if args.out:
                self.shell.user_ns[args.out] = handle
            return handle
        return await finish()

    def _deliver(self, args: Any, outcome: Any, interrupted: bool) -> Any:
        self.last_result = outcome
        self.shell.user_ns["_agent_last"] = outcome
        if args.out and not args.bg:  # a --bg run's VAR stays its handle (await it, or .result())
            self.shell.user_ns[args.out] = outcome
        where = args.out if args.out and not args.bg else "_agent_last"
        if interrupted:
            raise AgentInterrupted("the run was interrupted and cancelled", outcome, where)
        if isinstance(outcome, RunResult) and outcome.stop_reason == "error":
            raise AgentRunFailed(outcome.error or "the model failed", outcome, where)
        return outcome

    @staticmethod
    def view_title(args: Any, agent: ChatAgent) -> str:
        """The title of a run's (or map's) view: a generated name ("agent-3") says less than the variable the user
        wrote after -a."""
        return args.agent if args.agent and not agent.named else agent.name

    def _starter(self, args: Any, kind: str, cell: str | None, task_text: str, agent: ChatAgent,
                 options: dict[str, Any]) -> tuple[Callable[[Callable[[Any], None]], Awaitable[Any]], str, bool]:
        title = self.view_title(args, agent)
        if kind == "line":
            if not task_text:
                raise UsageError("%agent_run needs a task, e.g. %agent_run summarise the data")
            if args.interpolate:
                task_text = interpolate(task_text, self.shell.user_ns)
            # A task: the tool loop unless --mode says otherwise. ``options`` is read when the run starts: the
            # approver (the panel's buttons) is added to it after the view exists.
            mode = args.mode or ChatMode.AUTO
            return (lambda on_event: agent.arun(task_text, on_event=on_event, **{**options, "mode": mode})), \
                title, True
        body = (cell or "").strip()  # a terminal's cell ends with the blank lines that closed it
        if args.interpolate:
            body = interpolate(body, self.shell.user_ns)
        if args.batch and args.sequential:
            raise UsageError("choose one of --batch and --sequential")
        if args.batch or args.sequential:
            messages = [m.strip() for m in body.splitlines() if m.strip()]
            if not messages:
                raise UsageError("--batch/--sequential need one message per line in the cell")
            if args.batch:
                return (lambda on_event: agent.batch_run_async(messages, on_event=on_event, **options)), \
                    title, False
            return (lambda on_event: agent.sequential_run_async(messages, on_event=on_event, **options)), \
                title, False
        if not body.strip():
            raise UsageError("%%agent needs a message in the cell body")
        if ChatMode(options.get("mode") or agent.mode) is ChatMode.WORKFLOW:
            if not agent.workflow:
                raise UsageError("workflow mode: the agent has no steps (agent.add_workflow_step(name, action))")
            step_options = {k: v for k, v in options.items() if k != "mode"}
            return (lambda on_event: agent.execute_workflow_async(body, on_event=on_event, **step_options)), \
                title, False
        return (lambda on_event: agent.chat_result_async(body, on_event=on_event, **options)), title, True

    def _approver(self, view: Any, background: bool = False) -> Callable[[Any], Any] | None:
        """Who is asked about tool calls that need approval (the agent has no ``approve`` callback).

        A person at a widget front end: the panel's buttons; a terminal or a console with stdin: a
        y/n/reason prompt; nobody (nbclient, papermill, no stdin): None, so the core denies at once.
        """
        kernel = getattr(self.shell, "kernel", None)
        if kernel is None:
            return prompt_approver if sys.stdin is not None and sys.stdin.isatty() else None
        if not getattr(kernel, "_allow_stdin", False):  # nbclient/papermill: nobody to ask (read during the cell)
            return None
        panel_approver = getattr(view, "request_approval", None)
        if panel_approver is not None and self.approval_via != "prompt":
            return panel_approver  # type: ignore[no-any-return]
        if self.approval_via == "panel" or background:  # a --bg run outlives its cell's stdin
            return None
        return prompt_approver

    # ------------------------------------------------------------------ agents and views
    def widgets_available(self) -> bool:
        """Whether runs show the live widget panel here (the ``frontend`` config, else the front end's kind)."""
        if self.frontend != "auto":
            return self.frontend == "widgets"
        try:
            from ..ui.frontend import widget_frontend
        except ImportError:
            return getattr(self.shell, "kernel", None) is not None
        return bool(widget_frontend(self.shell))

    def named_agent(self, name: str) -> ChatAgent:
        """The ChatAgent called ``name`` in the namespace (``-a NAME``)."""
        return named_agent(self.shell.user_ns, name)

    def _kernel_agent(self) -> ChatAgent | None:
        """The per-kernel agent ``%%agent`` uses now: the configured session's (made now, so a reset before its
        first turn still starts the stored conversation afresh), else the default one if it exists yet."""
        return self.default_agent() if self.session else self._default_agent

    def default_agent(self, session: str | None = None) -> ChatAgent:
        """The per-kernel agent (of ``session``, else of ``%config AgentMagics.session``, if any: it starts
        from that stored conversation). Its model is the config's (resolved on first use: an explicit ``-m``
        run never resolves it, so the "no model configured" notice only shows when the default is used)."""
        spec = self.model or None
        session = session or self.session or None
        if session is not None:
            agent = self._session_agents.get(session)
            if agent is None:
                agent = self._session_agents[session] = ChatAgent(
                    model=spec, name=f"agent:{session}", mode=self.mode, max_iterations=self.max_iterations,
                    session=session)
                self._session_specs[session] = spec
            elif spec != self._session_specs.get(session):
                agent.model = spec
                self._session_specs[session] = spec
            return agent
        if self._default_agent is None:
            self._default_agent = ChatAgent(model=spec, name="agent", mode=self.mode,
                                            max_iterations=self.max_iterations)
            self._default_model_spec = spec
        elif spec != self._default_model_spec:
            self._default_agent.model = spec
            self._default_model_spec = spec
        return self._default_agent
