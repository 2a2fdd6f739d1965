"""Running a magic's coroutine from a cell: the input rewriters, the runner they call, the blocking fallback,
``--bg`` handles, and the exceptions a cell ends with.

Loop strategy
-------------
IPython never awaits what a magic returns, but it runs a cell as a coroutine on the kernel's loop when
the *transformed* cell has a top-level ``await``. So an input transformer rewrites our magics (a
``%%agent`` cell, ``%agent_run`` / ``%agent_map`` / ``%agent_mcp`` lines at column 0, also
``x = %agent_run ...``) into ``await _menglong_magic.run(...)``, where ``_menglong_magic`` is one
:class:`MagicRunner` put in the shell's hidden namespace at load: the run is a plain task on the kernel's
loop, Run All waits for it, output lands in the right cell, and a kernel interrupt cancels it. The text is
passed exactly as typed (no ``$name``/``{expr}`` expansion: ``-i`` asks for namespace interpolation).

Where the rewrite cannot apply (called from a function, ``%autoawait off``, ``run_cell_magic`` from
code), the magic function itself runs: with no running loop (terminal IPython) it uses the agent's
per-thread loop; inside a running kernel loop it makes that loop re-entrant with ``nest_asyncio2``,
applied lazily on this path only, so the agent still runs on the kernel's loop and its loop-bound
HTTP client stays valid. Ctrl-C there cancels the run task and drains it before re-raising.

Terminal IPython (no kernel) gets the blocking form even at top level: its top-level ``await`` runs
``loop.run_until_complete``, which Ctrl-C leaves with the cell's task still pending on the loop.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Generator
from typing import Any, Protocol

from IPython.core.error import UsageError

from ..agent.sync import drive, run_sync
from ..markup import terminal_safe
from .options import asks_for_help

#: The name of the runner object in the shell's (hidden) namespace; rewritten cells call it.
RUNNER_NAME = "_menglong_magic"
_CELL_RE = re.compile(r"^%%(?P<name>agent)(?=\s|$)(?P<rest>.*)$")


class AgentRunFailed(Exception):
    """The model failed: a short message instead of a long traceback; the partial result is kept."""

    def __init__(self, message: str, result: Any = None, where: str | None = None):
        super().__init__(message)
        self.result = result
        self.where = where

    def _render_traceback_(self) -> list[str]:  # IPython shows these lines instead of a traceback
        lines = [f"\x1b[31mAgentRunFailed\x1b[0m: {terminal_safe(str(self))}"]  # the model's error text
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
        return [f"\x1b[31mAgentInterrupted\x1b[0m: {terminal_safe(str(self))}",
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


class MagicExecutor(Protocol):
    """A Magics class whose magics run as coroutines: ``execute_magic(name, line, cell)``."""

    async def execute_magic(self, name: str, line: str, cell: str | None) -> Any: ...


def run_blocking(coro: Awaitable[Any]) -> Any:
    """Fallback path: a magic was called where the await rewrite could not apply."""
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is None:  # outside the `except`: an error of the run must not chain "no running event loop"
        return run_sync(coro, "await the magic at the top level of a cell")  # type: ignore[arg-type]
    import nest_asyncio2

    nest_asyncio2.apply(loop)
    return drive(loop, coro)  # type: ignore[arg-type]


class MagicRunner:
    """What rewritten cells call: ``await _menglong_magic.run("agent_run", line)`` (or ``.blocking(...)``).

    It finds the Magics object that registered ``name`` on its shell and awaits its ``execute_magic``;
    ``value=False`` (a bare magic statement) returns None, so the cell shows no ``Out[n]`` repeating the
    answer (a trailing ``;`` is not enough: IPython only honours it for cells stored in the history).
    """

    def __init__(self, shell: Any):
        self.shell = shell

    def _owner(self, name: str, cell: str | None) -> MagicExecutor:
        method = self.shell.magics_manager.magics["cell" if cell is not None else "line"].get(name)
        owner = getattr(method, "__self__", None)
        if owner is None or not hasattr(owner, "execute_magic"):
            raise UsageError("menglong_magic is not loaded: run %load_ext menglong_magic")
        return owner  # type: ignore[no-any-return]

    def _printed_help(self, name: str, line: str, cell: str | None) -> bool:
        """``-h``/``--help``: the magic prints its usage and options (its help_flag) and nothing runs."""
        if not asks_for_help(line):
            return False
        self._owner(name, cell)
        self.shell.magics_manager.magics["cell" if cell is not None else "line"][name](
            line, *(() if cell is None else (cell,)))
        return True

    async def run(self, name: str, line: str, cell: str | None = None, value: bool = True) -> Any:
        if self._printed_help(name, line, cell):
            return None
        result = await self._owner(name, cell).execute_magic(name, line, cell)
        return result if value else None

    def blocking(self, name: str, line: str, cell: str | None = None, value: bool = True) -> Any:
        if self._printed_help(name, line, cell):
            return None
        result = run_blocking(self._owner(name, cell).execute_magic(name, line, cell))
        return result if value else None

    def __repr__(self) -> str:
        return "<menglong_magic runner of rewritten magic cells>"


def install_runner(shell: Any) -> None:
    """Put the runner in the shell's namespace, hidden from ``%who`` (again after a ``%reset``)."""
    if not isinstance(shell.user_ns.get(RUNNER_NAME), MagicRunner):
        runner = MagicRunner(shell)
        shell.user_ns[RUNNER_NAME] = runner
        shell.user_ns_hidden[RUNNER_NAME] = runner


def uninstall_runner(shell: Any) -> None:
    shell.user_ns.pop(RUNNER_NAME, None)
    shell.user_ns_hidden.pop(RUNNER_NAME, None)


def awaited_or_blocking(shell: Any) -> str:
    """The call a rewritten magic makes: ``await <runner>.run`` in a kernel, ``<runner>.blocking`` elsewhere.

    A kernel transforms cells inside its running loop; terminal IPython (and ``%autoawait off``) does not:
    there top-level ``await`` runs ``loop.run_until_complete``, which Ctrl-C leaves with the task pending.
    """
    blocking = f"{RUNNER_NAME}.blocking"
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return blocking
    return f"await {RUNNER_NAME}.run" if getattr(shell, "autoawait", False) else blocking


class LineMagicRewriter:
    """Cleanup input transformer: column-0 ``%name ...`` lines (also ``x = %name ...``) become a call of the
    runner (see :func:`awaited_or_blocking`) with the rest of the line as typed. A bare statement passes
    ``value=False``, so the cell shows the run's view, not an ``Out[n]`` repeating the answer.
    """

    # check_complete() skips transformers with side effects: a magic + Enter is left to IPython's rules.
    has_side_effects = True

    def __init__(self, shell: Any, *names: str):
        self.shell, self.names = shell, names
        alternatives = "|".join(re.escape(n) for n in names)
        self.pattern = re.compile(
            rf"^(?P<assign>[A-Za-z_][\w.]*\s*=\s*)?%(?P<name>{alternatives})(?=\s|$)(?P<rest>.*?)(?P<semi>;?)\s*$")

    def call(self) -> str:
        install_runner(self.shell)
        return awaited_or_blocking(self.shell)

    def __call__(self, lines: list[str]) -> list[str]:
        out = []
        for text in lines:
            m = self.pattern.match(text.rstrip("\n"))
            if m:
                assign = m["assign"] or ""
                value = "" if assign else ", value=False"
                text = f"{assign}{self.call()}({m['name']!r}, {m['rest'].strip()!r}{value}){m['semi']}\n"
            out.append(text)
        return out


class CellMagicRewriter(LineMagicRewriter):
    """``%%agent`` cells (and the line magics ``names``) become calls of the runner."""

    def __call__(self, lines: list[str]) -> list[str]:
        if not lines:
            return lines
        match = _CELL_RE.match(lines[0].rstrip("\n"))
        if match:
            body = "".join(lines[1:])
            body = body[:-1] if body.endswith("\n") else body  # as IPython passes a cell body
            return [f"{self.call()}({match['name']!r}, {match['rest'].strip()!r}, {body!r}, value=False)\n"]
        return super().__call__(lines)


async def heartbeat(period: float = 0.2) -> None:
    """Wake the loop regularly while a run blocks the cell.

    A kernel interrupt's SIGINT may be delivered to a non-main thread; Python then runs the handler
    (ipykernel's "cancel this cell") only when the main thread next executes bytecode. With every task
    idle (a model or tool awaiting the network) the loop may sleep for many seconds; this keeps the
    interrupt latency to about ``period``.
    """
    while True:  # noqa: ASYNC110 - the periodic wake-up itself is the point
        await asyncio.sleep(period)


async def await_shielded(task: asyncio.Task[Any]) -> tuple[Any, bool]:
    """Await ``task`` so that a cancellation of *this* cell (a kernel interrupt) stops the task and is told
    apart from the task's own cancellation (the panel's Stop). Returns (the outcome or None, interrupted)."""
    try:
        # shield: a kernel interrupt cancels this cell's task; awaiting the run directly would cancel the run
        # first and look exactly like the Stop button. Here the two stay distinguishable.
        return await asyncio.shield(task), False
    except (asyncio.CancelledError, KeyboardInterrupt):
        interrupted = False
        if task.done() and not task.cancelled() and isinstance(task.exception(), KeyboardInterrupt):
            interrupted = True  # Ctrl-C landed inside the run's own step (terminal)
        if not task.done():  # our own cell was cancelled (kernel interrupt): stop the run too
            interrupted = True
            task.cancel()
            current = asyncio.current_task()
            if current is not None and hasattr(current, "uncancel"):
                current.uncancel()
            await asyncio.wait([task])
        return None, interrupted
