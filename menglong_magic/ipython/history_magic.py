"""``%agent_history`` (stored sessions: list, show, export, import, forget) and ``%agent_log`` (the run log).

Both read the store of :mod:`menglong_magic.store` (``--store PATH``, else ``%config AgentMagics.store`` /
``MENGLONG_STORE`` / the user's data directory). They never create a store just by looking.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from ..markup import shorten
from ..store import RunLog, Store, StoredTurn, StoreError, configured_store_path, default_store_path, open_store
from .options import help_flag


def _store(path: str | None) -> Store | None:
    """The store to read (None: there is none yet at that path)."""
    target = Path(path).expanduser() if path else default_store_path()
    if not target.exists():
        return None
    try:
        return open_store(target)
    except StoreError as exc:
        raise UsageError(str(exc)) from None


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def _turn_lines(turn: StoredTurn, width: int = 300) -> list[str]:
    if turn.kind == "reset":
        return [f"--- reset at {_when(turn.created)} (later kernels start after this) ---"]
    lines = [f"[{turn.seq}] {_when(turn.created)}"]
    for message in turn.messages:
        role = message.get("role", "?")
        content = message.get("content")
        text = content if isinstance(content, str) else json.dumps(content) if content else ""
        text = shorten(text.replace("\n", " "), width)
        if role == "tool":
            lines.append(f"    tool result: {text}")
            continue
        if text:
            lines.append(f"  {role}: {text}")
        for call in message.get("tool_calls") or ():
            fn = call.get("function", {})
            lines.append(f"  {role} calls {fn.get('name', '?')}({fn.get('arguments', '')})")
    return lines


@magics_class
class HistoryMagics(Magics):
    """Stored conversations and the run log."""

    @help_flag
    @magic_arguments()
    @argument("words", nargs="*",
              help="nothing: list sessions · NAME (or show NAME): its turns · export NAME --md/--json FILE · "
                   "import FILE [--as NAME] · forget NAME [--runs]")
    @argument("--last", type=int, metavar="N", help="show only the last N turns")
    @argument("--md", metavar="FILE", help="export: write Markdown to FILE")
    @argument("--json", metavar="FILE", help="export: write JSON (re-importable) to FILE")
    @argument("--runs", action="store_true", help="forget: also delete the session's run-log rows")
    @argument("--as", dest="as_name", metavar="NAME", help="import: store the session under this name")
    @argument("--store", metavar="PATH", help="the store file (default: the configured one)")
    @line_magic
    def agent_history(self, line: str) -> None:
        """Stored sessions: list them, show one, export/import one, forget one."""
        args = parse_argstring(self.agent_history, line)
        words = list(args.words)
        command = words.pop(0) if words and words[0] in ("list", "show", "export", "import", "forget") else (
            "show" if words else "list")
        try:
            self._history(command, words, args)
        except StoreError as exc:
            raise UsageError(str(exc)) from None

    def _history(self, command: str, words: list[str], args: Any) -> None:
        if command == "import":
            if len(words) != 1:
                raise UsageError("usage: %agent_history import FILE [--as NAME]")
            target = Path(args.store).expanduser() if args.store else default_store_path()
            try:
                name = open_store(target).import_json(words[0], args.as_name)
            except OSError as exc:
                raise UsageError(f"cannot read {words[0]}: {exc.strerror or exc}") from None
            print(f"imported session {name!r} into {target}")
            return
        store = _store(args.store)
        where = args.store or str(default_store_path())
        if command == "list":
            if words:
                raise UsageError("usage: %agent_history [NAME] (list takes no name)")
            sessions = store.sessions() if store is not None else []
            if not sessions:
                print(f"no stored sessions in {where}")
                return
            width = max(len("session"), *(len(s.name) for s in sessions))
            print(f"{'session'.ljust(width)}  turns  runs  updated")
            for s in sessions:
                print(f"{s.name.ljust(width)}  {s.turns:>5}  {s.runs:>4}  {_when(s.updated)}")
            return
        if len(words) != 1:
            raise UsageError(f"usage: %agent_history {command} NAME")
        name = words[0]
        if store is None or not store.has_session(name):
            raise UsageError(f"no session {name!r} in {where}")
        if command == "show":
            if args.last is not None and args.last < 1:
                raise UsageError("--last needs a positive number")
            for turn in store.turns(name, args.last):
                print("\n".join(_turn_lines(turn)))
        elif command == "export":
            if bool(args.md) == bool(args.json):
                raise UsageError("export needs exactly one of --md FILE and --json FILE")
            path, fmt = (args.md, "md") if args.md else (args.json, "json")
            try:
                store.export(name, path, fmt)
            except OSError as exc:
                raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
            print(f"session {name!r} written to {path}")
        elif command == "forget":
            turns, runs = store.forget(name, runs=args.runs)
            extra = f" and {runs} run-log row(s)" if args.runs else " (its run-log rows stay; --runs deletes them)"
            print(f"session {name!r} forgotten: {turns} stored turn(s){extra} deleted")

    @help_flag
    @magic_arguments()
    @argument("--session", help="only runs of this session")
    @argument("--model", help="only runs of this model")
    @argument("--status", help="only runs that ended so (ok/completed, error, cancelled, max_iterations, ...)")
    @argument("--since", help="only runs started at or after this date/time (ISO, e.g. 2026-11-30 or 2026-11-30T09:00)")
    @argument("--until", help="only runs started before this date/time (a date alone includes that day)")
    @argument("-n", "--limit", type=int, default=20, help="at most this many runs, newest first (0: all)")
    @argument("--store", metavar="PATH", help="the store file (default: the configured one)")
    @line_magic
    def agent_log(self, line: str) -> RunLog:
        """Recent runs as a table; the returned RunLog has ``.to_pandas()``."""
        args = parse_argstring(self.agent_log, line)
        store = _store(args.store)
        off = "" if args.store or configured_store_path() else (
            " (the run log is off in this kernel: runs are logged once a store is set, "
            "with %config AgentMagics.store = 'runs.sqlite', MENGLONG_STORE or a session)")
        if store is None:
            return RunLog([], empty=f"no runs logged{off}")
        try:
            log = store.runs(session=args.session, model=args.model, status=args.status, since=args.since,
                             until=args.until, limit=args.limit or None)
            filtered = any((args.session, args.model, args.status, args.since, args.until))
            log.empty = f"no runs{' match' if filtered else ' logged'} in {store.path}{off}"
            return log
        except ValueError as exc:  # a date that is not ISO
            raise UsageError(f"--since/--until: {exc}") from None
        except StoreError as exc:
            raise UsageError(str(exc)) from None
