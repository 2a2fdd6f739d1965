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

Terminal IPython (no kernel) gets the blocking form even at top level: its top-level ``await`` runs
``loop.run_until_complete``, which Ctrl-C leaves with the cell's task still pending on the loop.

A cell behaves like a Python cell: an interrupt ends it as an interrupted cell (an error reply, so Run
All stops) after the run was cancelled and its partial result saved; the cell shows the run's view and
no ``Out[n]`` repeating the answer (the value is in ``_agent_last`` or ``-o VAR``, or ``x = %agent_run``).
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import string
import sys
from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from traitlets import Bool, CaselessStrEnum, Float, Int, Unicode

from .. import events as ev
from ..agent import ApprovalDecision, ApprovalRequest, ChatAgent, ChatMode, RunResult
from ..agent.sync import drive, run_sync
from ..models import resolve_model
from ..secrets import redact
from ..tools.base import as_tool, is_tool
from ..tools.names import api_name
from ..ui.panel import make_view

_T = TypeVar("_T")

_MODULE = "__import__('menglong_magic.ipython.magics', fromlist=['run_magic'])"
_RUNNER = f"{_MODULE}.run_magic"
_BLOCKING_RUNNER = f"{_MODULE}.run_magic_blocking"
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


class AgentInterrupted(KeyboardInterrupt):
    """A kernel interrupt (or Ctrl-C) stopped a blocking run: the cell ends as an interrupted cell.

    Being a KeyboardInterrupt, it makes the kernel reply with an error, so Run All / nbclient stop there.
    """

    def __init__(self, message: str, result: Any = None, where: str = "_agent_last"):
        super().__init__(message)
        self.result = result
        self.where = where

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[31mAgentInterrupted\x1b[0m: {self}",
                f"the partial result is in `{self.where}`; the history is valid"]


class AgentTask:
    """Handle of a ``--bg`` run: awaitable; ``cancel()`` (thread-safe), ``done()``, ``result()``."""

    def __init__(self, task: asyncio.Task[Any], loop: asyncio.AbstractEventLoop, title: str,
                 run: asyncio.Task[Any] | None = None):
        self._task, self._loop, self.title = task, loop, title
        self._run = run if run is not None else task

    def __await__(self) -> Generator[Any, None, Any]:
        return self._task.__await__()

    def cancel(self) -> None:
        """Stop the run (like the panel's Stop): awaiting the handle then gives a "cancelled" result."""
        self._loop.call_soon_threadsafe(self._run.cancel)

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


def _magics() -> tuple[Any, AgentMagics]:
    from IPython import get_ipython

    shell = get_ipython()
    magics = shell.magics_manager.registry.get("AgentMagics") if shell else None
    if magics is None:
        raise UsageError("menglong_magic is not loaded: run %load_ext menglong_magic")
    return shell, magics


async def run_magic(kind: str, line: str, cell: str | None = None, value: bool = True) -> Any:
    """What rewritten cells await. Finds the extension's magics on the current shell.

    ``value=False`` (a bare magic statement): return None, so the cell shows no ``Out[n]`` repeating the
    answer (a trailing ``;`` is not enough: IPython only honours it for cells stored in the history).
    """
    shell, magics = _magics()
    result = await magics.execute(kind, shell.var_expand(line), cell)
    return result if value else None


def run_magic_blocking(kind: str, line: str, cell: str | None = None, value: bool = True) -> Any:
    """What rewritten cells call where top-level await cannot serve (terminal IPython, %autoawait off)."""
    shell, magics = _magics()
    result = magics._blocking(magics.execute(kind, shell.var_expand(line), cell))
    return result if value else None


def awaited_or_blocking(shell: Any, awaited: str, blocking: str) -> str:
    """The call a rewritten magic makes: ``await awaited`` in a kernel, ``blocking`` elsewhere.

    A kernel transforms cells inside its running loop; terminal IPython (and ``%autoawait off``) does not:
    there top-level ``await`` runs ``loop.run_until_complete``, which Ctrl-C leaves with the task pending.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return blocking
    return f"await {awaited}" if getattr(shell, "autoawait", False) else blocking


class LineMagicRewriter:
    """Cleanup input transformer: column-0 ``%name ...`` lines (also ``x = %name ...``) become a call of our
    runner (see :func:`awaited_or_blocking`) with the rest of the line as typed. A bare statement passes
    ``value=False``, so the cell shows the run's view, not an ``Out[n]`` repeating the answer.
    """

    # check_complete() skips transformers with side effects: a magic + Enter is left to IPython's rules.
    has_side_effects = True

    def __init__(self, shell: Any, name: str, awaited: str, blocking: str, head: str = ""):
        self.shell, self.awaited, self.blocking, self.head = shell, awaited, blocking, head
        self.pattern = re.compile(rf"^(?P<assign>[A-Za-z_][\w.]*\s*=\s*)?%{name}(?=\s|$)(?P<rest>.*?)(?P<semi>;?)\s*$")

    def call(self) -> str:
        return awaited_or_blocking(self.shell, self.awaited, self.blocking)

    def __call__(self, lines: list[str]) -> list[str]:
        out = []
        for text in lines:
            m = self.pattern.match(text.rstrip("\n"))
            if m:
                assign = m["assign"] or ""
                value = "" if assign else ", value=False"
                text = f"{assign}{self.call()}({self.head}{m['rest'].strip()!r}{value}){m['semi']}\n"
            out.append(text)
        return out


class AwaitRewriter(LineMagicRewriter):
    """``%%agent`` cells and ``%agent_run`` lines become calls of :func:`run_magic` (awaited in a kernel)."""

    def __init__(self, shell: Any):
        super().__init__(shell, "agent_run", _RUNNER, _BLOCKING_RUNNER, head="'line', ")

    def __call__(self, lines: list[str]) -> list[str]:
        if not lines:
            return lines
        match = _CELL_RE.match(lines[0].rstrip("\n"))
        if match:
            body = "".join(lines[1:])
            body = body[:-1] if body.endswith("\n") else body  # as IPython passes a cell body
            return [f"{self.call()}('cell', {match['rest'].strip()!r}, {body!r}, value=False)\n"]
        return super().__call__(lines)


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
        argument("-m", "--model", help="model for this run (name, 'local', 'offline' or 'replay:PATH')"),
        argument("-s", "--system", help="system prompt for this run"),
        argument("-t", "--tools", help="comma-separated tool functions from the namespace"),
        argument("--max-iterations", type=int, help="iteration cap"),
        argument("--timeout", type=float, help="timeout in seconds"),
        argument("-o", "--out", help="store the result in this variable"),
        argument("--bg", action="store_true", help="run in the background and return a handle at once"),
        argument("-q", "--quiet", action="store_true", help="no panel: the summary line and the answer"),
        argument("--reset", action="store_true", help="clear the agent's history first"),
        argument("--output", metavar="TYPE",
                 help="answer as an instance of this type from the namespace (a pydantic model, dataclass, "
                      "TypedDict or simple type): the result's .output"),
        argument("--record", metavar="PATH",
                 help="append this run's model requests and responses to a JSON Lines cassette (replay it with "
                      "-m replay:PATH)"),
        argument("--approve", action="store_true",
                 help="every tool call of this run waits for your approval (panel buttons or a prompt)"),
    )):
        func = decorator(func)
    return func


def split_options(parser: Any, line: str) -> tuple[str, str]:
    """``line`` as (leading options, the rest exactly as typed): the task text keeps its quotes and spacing.

    The options end at the first word that does not start with ``-`` (and is not an option's value), or
    at ``--``. Only the options are shell-parsed, so an apostrophe in the task ("What's") is just text.
    """
    takes_value = {opt for action in parser._actions for opt in action.option_strings if action.nargs != 0}
    flags = {opt for action in parser._actions for opt in action.option_strings}
    index = 0
    expect_value = False
    while True:
        index = _skip_space(line, index)
        if index >= len(line):
            return line, ""
        if not expect_value and not (line[index] == "-" and line[index + 1:index + 2] not in ("", " ")):
            return line[:index].rstrip(), line[index:].strip()
        token, end = _shell_word(line, index)
        if expect_value:
            expect_value = False
        elif token == "--":
            return line[:index].rstrip(), line[end:].strip()
        else:
            name = token.split("=", 1)[0]
            short = token[:2]
            if name not in flags and short not in flags:
                raise UsageError(f"unrecognized option {name} (to start the task with '-', write -- before it)")
            if name in flags:
                expect_value = name in takes_value and "=" not in token
            else:  # "-ovalue": a short option with its value attached
                expect_value = short in takes_value and len(token) == 2
        index = end


def _shell_word(line: str, index: int) -> tuple[str, int]:
    """One shell word of ``line`` starting at ``index``, and the index after it."""
    lexer = shlex.shlex(line[index:], posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    try:
        token = lexer.get_token()
    except ValueError as exc:  # unbalanced quotes in an option's value
        raise UsageError(f"cannot parse the options: {exc}") from None
    return token or "", index + lexer.instream.tell()  # type: ignore[attr-defined]


def prompt_approver(request: ApprovalRequest) -> ApprovalDecision:
    """Ask on stdin: y approves; n (or nothing) denies; anything else denies with that text as the reason."""
    arguments = request.arguments if isinstance(request.arguments, str) else json.dumps(request.arguments)
    answer = input(f"approve {request.tool_name}({arguments})? [y/N/reason] ").strip()
    if answer.lower() in ("y", "yes"):
        return ApprovalDecision(True, None, "prompt")
    if answer.lower() in ("", "n", "no"):
        return ApprovalDecision(False, None, "prompt")
    return ApprovalDecision(False, answer, "prompt")


def _skip_space(line: str, index: int) -> int:
    while index < len(line) and line[index].isspace():
        index += 1
    return index


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
    @argument("task", nargs="*", help="the task (the rest of the line, as typed)")
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
        agent = self._named_agent(args.agent) if args.agent else self._default_agent
        tools = self._named_agent(args.agent).tools if args.agent else self._namespace_tools()
        toolsets = list(agent.toolsets) if agent is not None else []
        if not tools and not toolsets:
            print("no tools (decorate functions with @tool)")
        sent_names: dict[str, str] = {}
        for name in tools:  # in the order the run's tool table adds them, so clashes resolve the same way
            sent_names[name] = api_name(name, set(sent_names.values()))
        for name, t in sorted(tools.items()):
            kind = "async" if t.is_async else "sync"
            sent = sent_names[name]
            sent_as = f" [sent to the model as {sent!r}]" if sent != name else ""
            print(f"{name} ({kind}){sent_as}: {t.description.splitlines()[0] if t.description else ''}")
        for toolset in toolsets:  # listed when a run starts; %agent_mcp list shows their tools
            state = getattr(toolset, "state", "")
            print(f"+ the tools of {toolset.name!r} ({type(toolset).__name__}{', ' + state if state else ''}; "
                  f"see %agent_mcp list)")

    # ------------------------------------------------------------------ execution
    def _parse(self, kind: str, line: str) -> tuple[Any, str]:
        func = self.agent if kind == "cell" else self.agent_run
        if kind == "cell":
            options, task = line, ""
        else:
            options, task = split_options(func.parser, line)
        try:
            words = shlex.split(options)  # POSIX quoting: -s 'be brief' gives be brief, without the quotes
        except ValueError as exc:
            raise UsageError(f"cannot parse the options: {exc}") from None
        return func.parser.parse_args(words), task

    async def execute(self, kind: str, line: str, cell: str | None) -> Any:
        """Parse, pick the agent and this run's settings, run with a view; shared by every path.

        Nothing here writes to the agent: ``-m/-s/-t/--mode`` and the config are this run's overrides.
        """
        args, task_text = self._parse(kind, line)
        loop = asyncio.get_running_loop()
        agent = self._named_agent(args.agent) if args.agent else self._configured(self.default_agent)
        self._configured(lambda: agent.model)  # resolved now: a bad configuration is one line, not a failed run
        overrides = self._overrides(args, agent)
        if args.reset:
            agent.clear_context()
        starter, title, single_run = self._starter(args, kind, cell, task_text, agent, overrides)
        holder: dict[str, asyncio.Task[Any]] = {}
        outcome_of_run: dict[str, Any] = {}

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
        if agent.approve is None:
            approver = self._approver(view, background=args.bg)
            if approver is not None:
                overrides["approve"] = approver

        def on_event(event: ev.Event) -> None:
            # The result of this cell's own run, even if it ends by cancellation (then arun raises).
            if isinstance(event, ev.RunStarted) and "run_id" not in outcome_of_run:
                outcome_of_run["run_id"] = event.run_id
            elif isinstance(event, ev.RunFinished) and event.run_id == outcome_of_run.get("run_id"):
                outcome_of_run["result"] = event.result
            view.handle(event)

        view.show()
        task = loop.create_task(starter(on_event))
        holder["task"] = task

        async def finish() -> Any:
            interrupted = False
            heartbeat = None if args.bg else loop.create_task(_heartbeat())
            try:
                # shield: a kernel interrupt cancels this cell's task; awaiting the run directly would cancel
                # the run first and look exactly like the Stop button. Here the two stay distinguishable.
                outcome = await asyncio.shield(task)
            except (asyncio.CancelledError, KeyboardInterrupt):
                if task.done() and not task.cancelled() and isinstance(task.exception(), KeyboardInterrupt):
                    interrupted = True  # Ctrl-C landed inside the run's own step (terminal)
                if not task.done():  # our own cell was cancelled (kernel interrupt): stop the run too
                    interrupted = True
                    task.cancel()
                    current = asyncio.current_task()
                    if current is not None and hasattr(current, "uncancel"):
                        current.uncancel()
                    await asyncio.wait([task])
                outcome = outcome_of_run.get("result") if single_run else None
            finally:
                if heartbeat is not None:
                    heartbeat.cancel()
                view.finish()
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
        if args.out:
            self.shell.user_ns[args.out] = outcome
        if interrupted:
            raise AgentInterrupted("the run was interrupted and cancelled", outcome, args.out or "_agent_last")
        if isinstance(outcome, RunResult) and outcome.stop_reason == "error":
            raise AgentRunFailed(outcome.error or "the model failed", outcome, args.out)
        return outcome

    def _overrides(self, args: Any, agent: ChatAgent) -> dict[str, Any]:
        """This run's settings on top of the agent's defaults (the default agent takes the config's)."""
        overrides: dict[str, Any] = {}
        if agent is self._default_agent:
            overrides.update(system=self.system or "", mode=self.mode, tools=self._namespace_tools())
        if args.model:
            try:
                overrides["model"] = resolve_model(args.model)
            except (ValueError, TypeError, OSError) as exc:  # OSError: e.g. replay:PATH with no such file
                raise UsageError(f"-m {args.model}: {exc}") from None
        if args.system:
            overrides["system"] = args.system
        if getattr(args, "mode", None):
            overrides["mode"] = args.mode
        if args.tools:
            tools = {}
            for name in (n.strip() for n in args.tools.split(",") if n.strip()):
                func = self.shell.user_ns.get(name)
                if func is None or not callable(func):
                    raise UsageError(f"-t: {name!r} is not a function in the namespace")
                t = as_tool(func)
                tools[t.name] = t
            overrides["tools"] = tools
        if getattr(args, "output", None):
            output_type = self._namespace_type(args.output)
            try:
                from ..agent.output import OutputSpec

                OutputSpec.of(output_type)
            except TypeError as exc:
                raise UsageError(f"--output {args.output}: {exc}") from None
            overrides["output_type"] = output_type
        if getattr(args, "record", None):
            from ..models import Recorder

            overrides["model"] = Recorder(overrides.get("model") or agent.model, args.record)
        if getattr(args, "approve", False):
            overrides["approve_all"] = True
        if self.approval_timeout is not None:
            overrides["approval_timeout"] = self.approval_timeout
        if self.request_timeout is not None:
            overrides["request_timeout"] = self.request_timeout
        if self.max_retries is not None:
            overrides["max_retries"] = self.max_retries
        return overrides

    def _starter(self, args: Any, kind: str, cell: str | None, task_text: str, agent: ChatAgent,
                 overrides: dict[str, Any]) -> tuple[Callable[[Callable[[Any], None]], Awaitable[Any]], str, bool]:
        max_iterations = args.max_iterations or self.max_iterations
        timeout = args.timeout if args.timeout is not None else self.timeout
        mode = ChatMode(overrides.get("mode") or agent.mode)
        if kind == "line":
            if not task_text:
                raise UsageError("%agent_run needs a task, e.g. %agent_run summarise the data")
            # A task: the tool loop, whatever the agent's mode. ``overrides`` is read when the run starts: the
            # approver (the panel's buttons) is added to it after the view exists.
            return (lambda on_event: agent.arun(task_text, max_iterations, timeout, on_event=on_event,
                                                **{**overrides, "mode": ChatMode.AUTO})), agent.name, True
        body = (cell or "").strip()  # a terminal's cell ends with the blank lines that closed it
        if args.interpolate:
            body = string.Formatter().vformat(body, (), _Namespace(self.shell.user_ns))
        if args.batch and args.sequential:
            raise UsageError("choose one of --batch and --sequential")
        batch_overrides = {k: v for k, v in overrides.items() if k in ("model", "system", "tools", "mode")}
        if args.batch or args.sequential:
            messages = [m.strip() for m in body.splitlines() if m.strip()]
            if not messages:
                raise UsageError("--batch/--sequential need one message per line in the cell")
            if args.batch:
                return (lambda on_event: agent.batch_run_async(messages, on_event=on_event,
                                                               **batch_overrides)), agent.name, False
            return (lambda on_event: agent.sequential_run_async(messages, on_event=on_event,
                                                                **batch_overrides)), agent.name, False
        if not body.strip():
            raise UsageError("%%agent needs a message in the cell body")
        if mode is ChatMode.WORKFLOW:
            if not agent.workflow:
                raise UsageError("workflow mode: the agent has no steps (agent.add_workflow_step(name, action))")
            return (lambda on_event: agent.execute_workflow_async(body, on_event=on_event)), agent.name, False
        return (lambda on_event: agent.chat_result_async(body, on_event=on_event, max_iterations=max_iterations,
                                                         timeout=timeout, **overrides)), agent.name, True

    @staticmethod
    def _configured(make: Callable[[], _T]) -> _T:
        """``make()``, with a configuration error (a refused URL, a missing setting) as one short UsageError."""
        try:
            return make()
        except (ValueError, TypeError, OSError, ImportError) as exc:  # e.g. a cassette or an extra missing
            message = redact(str(exc) or type(exc).__name__)
        raise UsageError(f"agent configuration: {message}")  # outside `except`: nothing chained, no traceback

    def _blocking(self, coro: Awaitable[Any]) -> Any:
        """Fallback path: the magic was called where the await rewrite could not apply."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:  # outside the `except`: an error of the run must not chain "no running event loop"
            return run_sync(coro, "await run_magic(...)")  # type: ignore[arg-type]
        import nest_asyncio2

        nest_asyncio2.apply(loop)
        return drive(loop, coro)  # type: ignore[arg-type]

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

    # ------------------------------------------------------------------ agents and tools
    def _widgets_available(self) -> bool:
        if self.frontend != "auto":
            return self.frontend == "widgets"
        try:
            from ..ui.frontend import widget_frontend
        except ImportError:
            return getattr(self.shell, "kernel", None) is not None
        return bool(widget_frontend(self.shell))

    def _namespace_type(self, expression: str) -> Any:
        """A type named in the namespace (``City``, ``list[str]``, ``typing.Literal['a', 'b']``)."""
        try:
            return eval(expression, self.shell.user_ns)  # the user's own namespace and text
        except Exception as exc:
            raise UsageError(f"--output {expression}: not a type in the namespace ({type(exc).__name__}: {exc})") \
                from None

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
        """The per-kernel agent. Its model is the config's (resolved on first use: an explicit ``-m`` run
        never resolves it, so the "no model configured" notice only shows when the default is used)."""
        spec = self.model or None
        if self._default_agent is None:
            self._default_agent = ChatAgent(model=spec, name="agent", mode=self.mode,
                                            max_iterations=self.max_iterations)
            self._default_model_spec = spec
        elif spec != self._default_model_spec:
            self._default_agent.model = spec
            self._default_model_spec = spec
        return self._default_agent
