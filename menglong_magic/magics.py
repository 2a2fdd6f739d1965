"""``%%agent`` and ``%agent_run``: run a ChatAgent on the kernel's own event loop, with a live view.

Loop strategy
-------------
IPython never awaits what a magic returns, but it runs a cell as a coroutine on the kernel's loop when
the *transformed* cell has a top-level ``await``. So an input transformer rewrites our magics (a
``%%agent`` cell, ``%agent_run`` lines at column 0, also ``x = %agent_run ...``) into
``await <coroutine>``: the run is a plain task on the kernel's loop, Run All waits for it, output lands
in the right cell, and a kernel interrupt cancels it.

Where the rewrite cannot apply (called from a function, ``%autoawait off``, ``run_cell_magic`` from
code), the magic function itself runs: with no running loop (terminal IPython) it uses the agent's
per-thread loop; inside a running kernel loop it makes that loop re-entrant with ``nest_asyncio2``,
applied lazily on this path only, so the agent still runs on the kernel's loop and its loop-bound
HTTP client stays valid. Ctrl-C there cancels the run task and drains it before re-raising.
"""

from __future__ import annotations

import asyncio
import re
import string
from collections.abc import Awaitable, Callable, Generator
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from traitlets import Bool, CaselessStrEnum, Float, Int, Unicode

from .agent import ChatAgent, ChatMode, RunResult
from .agent.sync import drive, run_sync
from .models import resolve_model
from .panel import make_view
from .tools import as_tool, is_tool

_RUNNER = "__import__('menglong_magic.magics', fromlist=['run_magic']).run_magic"
_LINE_RE = re.compile(r"^(?P<assign>[A-Za-z_][\w.]*\s*=\s*)?%agent_run(?=\s|$)(?P<rest>.*?)(?P<semi>;?)\s*$")
_CELL_RE = re.compile(r"^%%agent(?=\s|$)(?P<rest>.*)$")


class AgentRunFailed(Exception):
    """The model failed: a short message instead of a long traceback; the partial result is kept."""

    def __init__(self, message: str, result: Any = None, where: str | None = None):
        super().__init__(message)
        self.result = result
        self.where = where

    def _render_traceback_(self) -> list[str]:  # IPython shows these lines instead of a traceback
        lines = [f"\x1b[31mAgentRunFailed\x1b[0m: {self}"]
        lines.append(f"the partial result is in `{self.where}`" if self.where else
                     "the partial result is in `_agent_last` (or use -o VAR)")
        return lines


class AgentTask:
    """Handle of a ``--bg`` run: awaitable; ``cancel()`` (thread-safe), ``done()``, ``result()``."""

    def __init__(self, task: asyncio.Task[Any], loop: asyncio.AbstractEventLoop, title: str):
        self._task, self._loop, self.title = task, loop, title

    def __await__(self) -> Generator[Any, None, Any]:
        return self._task.__await__()

    def cancel(self) -> None:
        self._loop.call_soon_threadsafe(self._task.cancel)

    def done(self) -> bool:
        return self._task.done()

    def result(self) -> Any:
        return self._task.result()

    def __repr__(self) -> str:
        if not self._task.done():
            return f"<AgentTask {self.title}: running>"
        if self._task.cancelled():
            return f"<AgentTask {self.title}: cancelled>"
        return f"<AgentTask {self.title}: done>"


def run_magic(kind: str, line: str, cell: str | None = None) -> Awaitable[Any]:
    """What rewritten cells await. Finds the extension's magics on the current shell."""
    from IPython import get_ipython

    shell = get_ipython()
    magics = shell.magics_manager.registry.get("AgentMagics") if shell else None
    if magics is None:
        raise UsageError("menglong_magic is not loaded: run %load_ext menglong_magic")
    return magics.execute(kind, shell.var_expand(line), cell)


class _AwaitRewriter:
    """Cleanup input transformer: our magics become ``await run_magic(...)`` (top-level await)."""

    def __init__(self, shell: Any):
        self.shell = shell

    def __call__(self, lines: list[str]) -> list[str]:
        if not getattr(self.shell, "autoawait", False) or not lines:
            return lines
        match = _CELL_RE.match(lines[0].rstrip("\n"))
        if match:
            body = "".join(lines[1:])
            body = body[:-1] if body.endswith("\n") else body  # as IPython passes a cell body
            return [f"await {_RUNNER}('cell', {match['rest'].strip()!r}, {body!r})\n"]
        out = []
        for text in lines:
            m = _LINE_RE.match(text.rstrip("\n"))
            if m:
                assign = m["assign"] or ""
                text = f"{assign}await {_RUNNER}('line', {m['rest'].strip()!r}){m['semi']}\n"
            out.append(text)
        return out


async def _heartbeat(period: float = 0.2) -> None:
    """Wake the loop regularly while a run blocks the cell.

    A kernel interrupt's SIGINT may be delivered to a non-main thread; Python then runs the handler
    (ipykernel's "cancel this cell") only when the main thread next executes bytecode. With every task
    idle (a model or tool awaiting the network) the loop may sleep for many seconds; this keeps the
    interrupt latency to about ``period``.
    """
    while True:  # noqa: ASYNC110 - the periodic wake-up itself is the point
        await asyncio.sleep(period)


class _Namespace(dict):
    def __missing__(self, key: str) -> Any:
        raise UsageError(f"-i: {key!r} is not defined in the namespace (write {{{{ and }}}} for literal braces)")


def _run_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The options %%agent and %agent_run share (innermost decorators run first: keep help order)."""
    for decorator in reversed((
        argument("-a", "--agent", help="name of a ChatAgent in the namespace (default: the per-kernel agent)"),
        argument("-m", "--model", help="model for this run (name, 'local' or 'offline')"),
        argument("-s", "--system", help="system prompt for this run"),
        argument("-t", "--tools", help="comma-separated tool functions from the namespace"),
        argument("--max-iterations", type=int, help="iteration cap"),
        argument("--timeout", type=float, help="timeout in seconds"),
        argument("-o", "--out", help="store the result in this variable"),
        argument("--bg", action="store_true", help="run in the background and return a handle at once"),
        argument("-q", "--quiet", action="store_true", help="no panel: one summary line"),
        argument("--reset", action="store_true", help="clear the agent's history first"),
    )):
        func = decorator(func)
    return func


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
    show_panel = Bool(True, help="Show the live widget panel (False: a text view).").tag(config=True)
    panel_update_interval = Float(0.1, help="Seconds between panel updates (they are coalesced).").tag(config=True)

    def __init__(self, shell: Any = None, **kwargs: Any):
        super().__init__(shell=shell, **kwargs)
        self._default_agent: ChatAgent | None = None
        self._default_model_spec: str | None = None
        self.last_result: Any = None
        self.background: list[AgentTask] = []

    # ------------------------------------------------------------------ magics
    @magic_arguments()
    @_run_options
    @argument("--mode", choices=["normal", "auto", "workflow"], help="chat mode for this cell")
    @argument("-i", "--interpolate", action="store_true", help="substitute {name} from the namespace in the body")
    @argument("--batch", action="store_true", help="each non-empty line is one message, run in parallel")
    @argument("--sequential", action="store_true", help="each non-empty line is one message, one after another")
    @cell_magic
    def agent(self, line: str, cell: str) -> Any:
        """Send the cell body as one chat message to an agent."""
        return self._blocking(self.execute("cell", line, cell))

    @magic_arguments()
    @_run_options
    @argument("task", nargs="*", help="the task")
    @line_magic
    def agent_run(self, line: str) -> Any:
        """Run an autonomous task: the agent calls tools until it answers."""
        return self._blocking(self.execute("line", line, None))

    @magic_arguments()
    @argument("-a", "--agent", help="name of a ChatAgent in the namespace (default: the per-kernel agent)")
    @line_magic
    def agent_reset(self, line: str) -> None:
        """Clear an agent's conversation (system prompt and tools stay)."""
        args = parse_argstring(self.agent_reset, line)
        agent = self._named_agent(args.agent) if args.agent else self._default_agent
        if agent is not None:
            agent.clear_context()
        print(f"{agent.name if agent else 'agent'}: history cleared")

    @magic_arguments()
    @argument("-a", "--agent", help="name of a ChatAgent in the namespace")
    @line_magic
    def agent_tools(self, line: str) -> None:
        """List the tools an agent would get (default agent: every @tool function in the namespace)."""
        args = parse_argstring(self.agent_tools, line)
        tools = self._named_agent(args.agent).tools if args.agent else self._namespace_tools()
        if not tools:
            print("no tools (decorate functions with @tool)")
        for name, t in sorted(tools.items()):
            kind = "async" if t.is_async else "sync"
            print(f"{name} ({kind}): {t.description.splitlines()[0] if t.description else ''}")

    # ------------------------------------------------------------------ execution
    async def execute(self, kind: str, line: str, cell: str | None) -> Any:
        """Parse, pick the agent, run with a view; shared by the await path and the fallback."""
        func = self.agent if kind == "cell" else self.agent_run
        args = parse_argstring(func, line)
        loop = asyncio.get_running_loop()
        agent, restore = self._prepare_agent(args, kind)
        try:
            if args.reset:
                agent.clear_context()
            starter, title = self._starter(args, kind, cell, agent)
            single_run = kind == "line" or not (args.batch or args.sequential or agent.mode is ChatMode.WORKFLOW)
        except BaseException:
            restore()
            raise
        holder: dict[str, asyncio.Task[Any]] = {}

        def stop() -> None:  # thread-safe: the Stop click may arrive on a comm thread
            task = holder.get("task")
            if task is not None:
                loop.call_soon_threadsafe(task.cancel)

        view = make_view(
            title=title,
            widgets=self._widgets_available() and self.show_panel and not args.quiet,
            on_stop=stop,
            update_interval=self.panel_update_interval,
            compact=args.quiet,
        )
        view.show()
        task = loop.create_task(starter(view.handle))
        holder["task"] = task

        async def finish() -> Any:
            cancelled = False
            heartbeat = None if args.bg else loop.create_task(_heartbeat())
            try:
                outcome = await task
            except asyncio.CancelledError:
                cancelled = True
                if not task.done():  # our own cell was cancelled (kernel interrupt): stop the run too
                    task.cancel()
                    current = asyncio.current_task()
                    if current is not None and hasattr(current, "uncancel"):
                        current.uncancel()
                    await asyncio.wait([task])
                outcome = agent.last_result if single_run else None
            finally:
                if heartbeat is not None:
                    heartbeat.cancel()
                restore()
                view.finish()
            return self._deliver(args, outcome, cancelled, agent)

        if args.bg:
            bg = loop.create_task(finish())
            handle = AgentTask(bg, loop, title)
            self.background.append(handle)
            bg.add_done_callback(lambda _t: self.background.remove(handle) if handle in self.background else None)
            if args.out:
                self.shell.user_ns[args.out] = handle
            return handle
        return await finish()

    def _deliver(self, args: Any, outcome: Any, cancelled: bool, agent: ChatAgent) -> Any:
        self.last_result = outcome
        self.shell.user_ns["_agent_last"] = outcome
        if args.out:
            self.shell.user_ns[args.out] = outcome
        if cancelled:
            print(f"⏹ {agent.name}: run cancelled; the history is kept ({len(agent.messages)} messages)")
        if isinstance(outcome, RunResult) and outcome.stop_reason == "error":
            raise AgentRunFailed(outcome.error or "the model failed", outcome, args.out)
        return outcome

    def _starter(self, args: Any, kind: str, cell: str | None,
                 agent: ChatAgent) -> tuple[Callable[[Callable[[Any], None]], Awaitable[Any]], str]:
        max_iterations = args.max_iterations or self.max_iterations
        timeout = args.timeout if args.timeout is not None else self.timeout
        if kind == "line":
            task = " ".join(args.task).strip()
            if not task:
                raise UsageError("%agent_run needs a task, e.g. %agent_run summarise the data")
            return (lambda on_event: agent.arun(task, max_iterations, timeout, on_event=on_event)), agent.name
        body = cell or ""
        if args.interpolate:
            body = string.Formatter().vformat(body, (), _Namespace(self.shell.user_ns))
        if args.batch and args.sequential:
            raise UsageError("choose one of --batch and --sequential")
        if args.batch or args.sequential:
            messages = [m.strip() for m in body.splitlines() if m.strip()]
            if not messages:
                raise UsageError("--batch/--sequential need one message per line in the cell")
            if args.batch:
                return (lambda on_event: agent.batch_run_async(messages, on_event=on_event)), agent.name
            return (lambda on_event: agent.sequential_run_async(messages, on_event=on_event)), agent.name
        if not body.strip():
            raise UsageError("%%agent needs a message in the cell body")
        if agent.mode is ChatMode.WORKFLOW:
            if not agent.workflow:
                raise UsageError("workflow mode: the agent has no steps (agent.add_workflow_step(name, action))")
            return (lambda on_event: agent.execute_workflow_async(body, on_event=on_event)), agent.name
        return (lambda on_event: agent.chat_result_async(body, on_event=on_event, max_iterations=max_iterations,
                                                         timeout=timeout)), agent.name

    def _blocking(self, coro: Awaitable[Any]) -> Any:
        """Fallback path: the magic was called where the await rewrite could not apply."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return run_sync(coro, "await run_magic(...)")  # type: ignore[arg-type]
        import nest_asyncio2

        nest_asyncio2.apply(loop)
        return drive(loop, coro)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ agents and tools
    def _widgets_available(self) -> bool:
        return getattr(self.shell, "kernel", None) is not None

    def _named_agent(self, name: str) -> ChatAgent:
        obj = self.shell.user_ns.get(name)
        if obj is None:
            raise UsageError(f"-a {name}: no such variable")
        if not isinstance(obj, ChatAgent):
            raise UsageError(f"-a {name}: not a ChatAgent (it is a {type(obj).__name__})")
        return obj

    def _namespace_tools(self) -> dict[str, Any]:
        found = {}
        for key, value in list(self.shell.user_ns.items()):
            if not key.startswith("_") and is_tool(value):
                t = as_tool(value)
                found[t.name] = t
        return found

    def default_agent(self) -> ChatAgent:
        spec = self.model or None
        if self._default_agent is None:
            self._default_agent = ChatAgent(model=spec, name="agent", mode=self.mode,
                                            max_iterations=self.max_iterations)
            self._default_model_spec = spec
        elif spec != self._default_model_spec:
            self._default_agent.model = resolve_model(spec)
            self._default_model_spec = spec
        return self._default_agent

    def _prepare_agent(self, args: Any, kind: str) -> tuple[ChatAgent, Callable[[], None]]:
        """The agent for this run, with this run's overrides; ``restore()`` undoes them."""
        if args.agent:
            agent = self._named_agent(args.agent)
        else:
            agent = self.default_agent()
            agent.system = self.system or None
            agent.mode = ChatMode(self.mode)
            agent.tools = self._namespace_tools()
        saved = (agent.model, agent.system, agent.mode, agent.tools)
        if args.model:
            agent.model = resolve_model(args.model)
        if args.system:
            agent.system = args.system
        if getattr(args, "mode", None):
            agent.mode = ChatMode(args.mode)
        if args.tools:
            tools = {}
            for name in (n.strip() for n in args.tools.split(",") if n.strip()):
                func = self.shell.user_ns.get(name)
                if func is None or not callable(func):
                    raise UsageError(f"-t: {name!r} is not a function in the namespace")
                t = as_tool(func)
                tools[t.name] = t
            agent.tools = tools

        def restore() -> None:
            agent.model, agent.system, agent.mode, agent.tools = saved

        return agent, restore


def load_ipython_extension(ipython: Any) -> None:
    if "AgentMagics" in ipython.magics_manager.registry:
        return  # idempotent
    ipython.register_magics(AgentMagics(ipython))
    ipython.input_transformers_cleanup.append(_AwaitRewriter(ipython))


def unload_ipython_extension(ipython: Any) -> None:
    magics = ipython.magics_manager.registry.pop("AgentMagics", None)
    if magics is not None:
        for kind, names in magics.magics.items():
            for name in names:
                ipython.magics_manager.magics[kind].pop(name, None)
    cleanup = ipython.input_transformers_cleanup
    cleanup[:] = [t for t in cleanup if not isinstance(t, _AwaitRewriter)]
    ipython.user_ns.pop("_agent_last", None)
