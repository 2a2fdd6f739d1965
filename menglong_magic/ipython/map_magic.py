"""``%agent_map``: map a namespace iterable through an agent, with the map panel and an optional journal.

    %agent_map -o labels --journal runs.sqlite reviews Classify the sentiment of: {text}

The first word after the options names the iterable (a list of strings or dicts, a pandas DataFrame
or Series); the rest of the line is the prompt template (optional for strings), as typed: its ``{field}``s
are filled from each item only (``-i`` also fills other ``{name}``s from the namespace). The run options
and their flags are those of ``%agent_run`` (:mod:`.options`). Like ``%agent_run``,
a column-0 ``%agent_map`` line (also ``x = %agent_map ...``) is rewritten into a top-level ``await``,
so the map runs on the kernel's own loop; elsewhere it runs through the extension's blocking path.
An interrupt stops the map; everything that finished is in the journal (and in ``_agent_last``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import argument, magic_arguments

from ..maps.run import MapResult, PromptFormatError, format_prompt, input_rows
from ..ui.mapview import make_map_view
from . import kernel_status
from .cells import AgentInterrupted, await_shielded, run_blocking
from .options import help_flag, interpolate, parse_line, run_arguments


@magics_class
class AgentMapMagics(Magics):
    """``%agent_map``: one isolated agent run per item of a namespace iterable."""

    @help_flag
    @magic_arguments()
    @run_arguments
    @argument("--journal", metavar="PATH", help="SQLite journal: finished items are kept; a re-run asks only the rest")
    @argument("--max-concurrency", default="auto", help="'auto' (adaptive, default) or a fixed number")
    @argument("rest", nargs="*", metavar="ITERABLE [PROMPT TEMPLATE]",
              help="a namespace iterable's name, then the prompt template (optional: {field} or {} take each item)")
    @no_var_expand
    @line_magic
    def agent_map(self, line: str) -> Any:
        """Map a namespace iterable through an agent: ``%agent_map [options] ITERABLE [PROMPT TEMPLATE]``.

        Each item is one isolated run. A dict or DataFrame row fills ``{field}`` from its fields; a string or other
        single value fills ``{}`` (or ``{input}``), and is the prompt itself when there is no template. ``-i``
        first fills other ``{name}``s from the namespace (the items' fields win). Example:
        ``%agent_map -o labels reviews Classify the sentiment of: {text}``."""
        return run_blocking(self.execute(line))

    def _agent_magics(self) -> Any:
        magics = self.shell.magics_manager.registry.get("AgentMagics")
        if magics is None:
            raise UsageError("menglong_magic is not loaded: run %load_ext menglong_magic")
        return magics

    def _parse(self, line: str) -> tuple[Any, Any, str]:
        args, rest = parse_line(self.agent_map.parser, line, expand=self.shell.var_expand)
        name, _, template = rest.partition(" ")
        if not name:
            raise UsageError("%agent_map needs an iterable: %agent_map [options] ITERABLE [PROMPT {field}...]")
        if name not in self.shell.user_ns:
            raise UsageError(f"{name!r} is not defined in the namespace")
        return args, self.shell.user_ns[name], template.strip()

    async def execute_magic(self, name: str, line: str, cell: str | None) -> MapResult | None:
        """What the cell runner awaits for ``%agent_map``."""
        return await self.execute(line)

    async def execute(self, line: str) -> MapResult | None:
        args, inputs, template = self._parse(line)
        agent_magics = self._agent_magics()
        agent, options = agent_magics.agent_and_options(args)  # built exactly as for %agent_run and %%agent
        concurrency: int | str = args.max_concurrency
        if concurrency != "auto":
            try:
                concurrency = int(concurrency)
            except ValueError:
                raise UsageError("--max-concurrency: 'auto' or a number") from None
        if args.interpolate and template:
            template = interpolate(template, self.shell.user_ns, _fields(inputs))
        _check_template(inputs, template or None)
        loop = asyncio.get_running_loop()
        holder: dict[str, asyncio.Task[Any]] = {}

        def stop() -> None:
            task = holder.get("task")
            if task is not None:
                loop.call_soon_threadsafe(task.cancel)

        title = f"{agent_magics.view_title(args, agent)} map"
        view = make_map_view(title=title, widgets=agent_magics.widgets_available()
                             and agent_magics.show_panel and not args.quiet, on_stop=stop,
                             update_interval=max(agent_magics.panel_update_interval, 0.2), compact=args.quiet)
        cell_ended = kernel_status.cell_started(self.shell)  # the status stays "busy" (see kernel_status)
        view.show()
        task = loop.create_task(agent.map_async(inputs, template or None, journal=args.journal,
                                                max_concurrency=concurrency, on_event=view.handle, **options))
        holder["task"] = task
        result: MapResult | None = None
        try:
            result, interrupted = await await_shielded(task)
            if interrupted:
                # Like an interrupted Python cell (error reply: Run All stops); finished items are in the journal.
                kept = f"; finished items are in {args.journal}" if args.journal else ""
                raise AgentInterrupted(f"the map was interrupted and cancelled{kept}", None,
                                       args.journal or "_agent_last")
        finally:
            view.finish()
            cell_ended()
            self.shell.user_ns["_agent_last"] = result
            if args.out:
                self.shell.user_ns[args.out] = result
        return result  # None after the panel's Stop: the cell completes


def _fields(inputs: Any) -> frozenset[str]:
    """The field names of the items (DataFrame columns, dict keys), which ``-i`` leaves for each item."""
    columns = getattr(inputs, "columns", None)
    if columns is not None:
        return frozenset(str(c) for c in columns)
    name = getattr(inputs, "name", None)
    scalar = frozenset({"input", name} if isinstance(name, str) else {"input"})  # a string item, a Series' name
    if isinstance(inputs, (list, tuple)):
        return scalar | frozenset(str(k) for item in inputs if isinstance(item, dict) for k in item)
    return scalar


def _check_template(inputs: Any, template: str | None) -> None:
    """A template naming a field the rows lack is a usage error, before anything is requested."""
    if not hasattr(inputs, "__len__"):  # an iterator would be consumed by the check
        return
    try:
        rows, _labels, name = input_rows(inputs)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"%agent_map: {exc}") from None
    if rows:
        try:
            format_prompt(template, rows[0], name)
        except PromptFormatError:
            pass  # a value this format spec cannot apply to (NaT): that item's error, not the map's
        except (KeyError, ValueError, IndexError) as exc:
            raise UsageError(f"%agent_map: {exc.args[0] if exc.args else exc}") from None
