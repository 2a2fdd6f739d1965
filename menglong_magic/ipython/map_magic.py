"""``%agent_map``: map a namespace iterable through an agent, with the map panel and an optional journal.

    %agent_map -o labels --journal runs.sqlite reviews Classify the sentiment of: {text}

The first word after the options names the iterable (a list of strings or dicts, a pandas DataFrame
or Series); the rest of the line is the prompt template (optional for strings). Like ``%agent_run``,
a column-0 ``%agent_map`` line (also ``x = %agent_map ...``) is rewritten into a top-level ``await``,
so the map runs on the kernel's own loop; elsewhere it runs through the extension's blocking path.
An interrupt stops the map; everything that finished is in the journal (and in ``_agent_last``).
"""

from __future__ import annotations

import asyncio
import shlex
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from ..maps.run import MapResult
from ..ui.mapview import make_map_view
from . import kernel_status
from .magics import AgentInterrupted, LineMagicRewriter, _magics, split_options

_MODULE = "__import__('menglong_magic.ipython.map_magic', fromlist=['run_map_magic'])"


async def run_map_magic(line: str, value: bool = True) -> Any:
    """What rewritten ``%agent_map`` lines await."""
    shell, _ = _magics()
    magics = shell.magics_manager.registry.get("AgentMapMagics")
    if magics is None:
        raise UsageError("menglong_magic is not loaded: run %load_ext menglong_magic")
    result = await magics.execute(shell.var_expand(line))
    return result if value else None


def run_map_magic_blocking(line: str, value: bool = True) -> Any:
    shell, agent_magics = _magics()
    magics = shell.magics_manager.registry["AgentMapMagics"]
    result = agent_magics._blocking(magics.execute(shell.var_expand(line)))
    return result if value else None


class MapRewriter(LineMagicRewriter):
    """Column-0 ``%agent_map`` lines (also ``x = %agent_map ...``) become a call of :func:`run_map_magic`."""

    def __init__(self, shell: Any):
        super().__init__(shell, "agent_map", f"{_MODULE}.run_map_magic", f"{_MODULE}.run_map_magic_blocking")


@magics_class
class AgentMapMagics(Magics):
    """``%agent_map``: one isolated agent run per item of a namespace iterable."""

    @magic_arguments()
    @argument("-a", "--agent", help="name of a ChatAgent in the namespace (default: the per-kernel agent)")
    @argument("-m", "--model", help="model for this map (name, 'local', 'offline' or 'replay:PATH')")
    @argument("-s", "--system", help="system prompt for this map")
    @argument("-t", "--tools", help="comma-separated tool functions from the namespace")
    @argument("-o", "--out", help="store the MapResult in this variable")
    @argument("--journal", metavar="PATH", help="SQLite journal: finished items are kept; a re-run asks only the rest")
    @argument("--max-concurrency", default="auto", help="'auto' (adaptive, default) or a fixed number")
    @argument("--output", metavar="TYPE", help="answer as an instance of this type from the namespace")
    @argument("-q", "--quiet", action="store_true", help="no panel: one summary at the end")
    @argument("rest", nargs="*", help="ITERABLE [PROMPT TEMPLATE...]")
    @line_magic
    def agent_map(self, line: str) -> Any:
        """Map a namespace iterable through an agent: ``%agent_map [options] ITERABLE [PROMPT with {fields}]``."""
        _, agent_magics = _magics()
        return agent_magics._blocking(self.execute(line))

    def _parse(self, line: str) -> tuple[Any, Any, str]:
        options, rest = split_options(self.agent_map.parser, line)
        try:
            args = self.agent_map.parser.parse_args(shlex.split(options))
        except ValueError as exc:
            raise UsageError(f"cannot parse the options: {exc}") from None
        name, _, template = rest.partition(" ")
        if not name:
            raise UsageError("%agent_map needs an iterable: %agent_map [options] ITERABLE [PROMPT {field}...]")
        if name not in self.shell.user_ns:
            raise UsageError(f"{name!r} is not defined in the namespace")
        return args, self.shell.user_ns[name], template.strip()

    def _agent_and_overrides(self, args: Any) -> tuple[Any, dict[str, Any]]:
        """The agent and this map's settings, built exactly as for %agent_run (-m/-s/-t/--output)."""
        _, agent_magics = _magics()
        agent = agent_magics._named_agent(args.agent) if args.agent else agent_magics.default_agent()
        return agent, agent_magics._overrides(args, agent)

    async def execute(self, line: str) -> MapResult | None:
        args, inputs, template = self._parse(line)
        agent, overrides = self._agent_and_overrides(args)
        concurrency: int | str = args.max_concurrency
        if concurrency != "auto":
            try:
                concurrency = int(concurrency)
            except ValueError:
                raise UsageError("--max-concurrency: 'auto' or a number") from None
        _check_template(inputs, template or None)
        _, agent_magics = _magics()
        loop = asyncio.get_running_loop()
        holder: dict[str, asyncio.Task[Any]] = {}

        def stop() -> None:
            task = holder.get("task")
            if task is not None:
                loop.call_soon_threadsafe(task.cancel)

        view = make_map_view(title=f"{agent.name} map", widgets=agent_magics._widgets_available()
                             and agent_magics.show_panel and not args.quiet, on_stop=stop,
                             update_interval=max(agent_magics.panel_update_interval, 0.2), compact=args.quiet)
        cell_ended = kernel_status.cell_started(self.shell)  # the status stays "busy" (see kernel_status)
        view.show()
        task = loop.create_task(agent.map_async(inputs, template or None, journal=args.journal,
                                                max_concurrency=concurrency, on_event=view.handle, **overrides))
        holder["task"] = task
        result: MapResult | None = None
        try:
            result = await asyncio.shield(task)
        except (asyncio.CancelledError, KeyboardInterrupt):
            if task.done() and task.cancelled():  # the panel's Stop: the cell completes
                return None
            if not task.done():
                task.cancel()
                current = asyncio.current_task()
                if current is not None and hasattr(current, "uncancel"):
                    current.uncancel()
                await asyncio.wait([task])
            # Like an interrupted Python cell (error reply: Run All stops); finished items are in the journal.
            kept = f"; finished items are in {args.journal}" if args.journal else ""
            raise AgentInterrupted(f"the map was interrupted and cancelled{kept}", None,
                                   args.journal or "_agent_last") from None
        finally:
            view.finish()
            cell_ended()
            self.shell.user_ns["_agent_last"] = result
            if args.out:
                self.shell.user_ns[args.out] = result
        return result


def _check_template(inputs: Any, template: str | None) -> None:
    """A template naming a field the rows lack is a usage error, before anything is requested."""
    from ..maps.run import _rows, format_prompt

    if not hasattr(inputs, "__len__"):  # an iterator would be consumed by the check
        return
    try:
        rows, _labels, name = _rows(inputs)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"%agent_map: {exc}") from None
    if rows:
        try:
            format_prompt(template, rows[0], name)
        except (KeyError, ValueError, IndexError) as exc:
            raise UsageError(f"%agent_map: {exc.args[0] if exc.args else exc}") from None
