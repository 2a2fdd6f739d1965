"""Conversations and runs that outlive the process: named sessions and a run log, in one SQLite file.

``ChatAgent(session="analysis")`` saves every committed turn of its conversation and loads the saved turns
when a new process names the same session; every run of an agent whose store is configured is written to
the run log (task, model, settings summary, tool calls with clipped arguments and results, usage, cost, stop
reason, timings, session). Where the data goes: ``MENGLONG_STORE`` or :func:`set_default_store` (the magics'
``%config AgentMagics.store``), else ``store.sqlite`` in the user's data directory (``platformdirs``).

Guarantees:

- A turn is written in one transaction at the end of the turn (after the history invariant of
  :mod:`menglong_magic.agent.turn` has settled it), so a process killed mid-turn leaves no half turn.
- Many processes may write one store (WAL mode; each write waits for the others up to ``timeout``).
- Nothing is written unredacted: every text goes through :func:`menglong_magic.secrets.redact` first.
- A store that cannot be opened or written (locked, corrupt, newer schema) is reported in one line on
  stderr; the agent keeps working in memory and writes the turns it could not save at its next chance.
- The schema is versioned (``PRAGMA user_version``); :data:`MIGRATIONS` upgrades older files in place.

Standard library plus platformdirs; imports nothing from IPython.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .markup import shorten
from .secrets import redact

if TYPE_CHECKING:
    from .agent.result import RunResult
    from .agent.settings import RunSettings

__all__ = [
    "SCHEMA_VERSION",
    "AgentPersistence",
    "RunLog",
    "SessionInfo",
    "Store",
    "StoreError",
    "StoredTurn",
    "default_store_path",
    "open_store",
    "set_default_store",
]

#: Longest text kept per tool argument/result, task, answer and setting in the run log (after redaction).
CLIP = 2000


class StoreError(RuntimeError):
    """The store cannot be used (locked, corrupt, written by a newer version); the message is one line."""


# ---------------------------------------------------------------------------------------------- schema
def _v1(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE sessions (name TEXT PRIMARY KEY, created REAL NOT NULL, updated REAL NOT NULL)")
    # One row per turn: its messages as one JSON array, so a turn is written (and read back) whole.
    # kind 'reset': the conversation was cleared there; loading starts after the last reset.
    db.execute("CREATE TABLE turns (id INTEGER PRIMARY KEY AUTOINCREMENT, session TEXT NOT NULL, "
               "seq INTEGER NOT NULL, kind TEXT NOT NULL DEFAULT 'turn', run_id TEXT, messages TEXT NOT NULL, "
               "created REAL NOT NULL, UNIQUE (session, seq))")
    db.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT, session TEXT, agent TEXT, "
               "kind TEXT, task TEXT, model TEXT, settings TEXT, tool_calls TEXT, usage TEXT, "
               "input_tokens INTEGER, output_tokens INTEGER, cost REAL, stop_reason TEXT, error TEXT, "
               "final_output TEXT, iterations INTEGER, timings TEXT, started REAL, duration REAL, pid INTEGER)")
    db.execute("CREATE INDEX runs_started ON runs (started)")
    db.execute("CREATE INDEX runs_session ON runs (session)")


#: Schema version -> the step that brings a store from the previous version to it (in one transaction).
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _v1}
SCHEMA_VERSION = max(MIGRATIONS)


def migrate(db: sqlite3.Connection) -> int:
    """Bring ``db`` (autocommit connection) to :data:`SCHEMA_VERSION`; returns the version found."""
    db.execute("BEGIN IMMEDIATE")  # two processes opening a new store at once: one creates, one waits
    try:
        found = int(db.execute("PRAGMA user_version").fetchone()[0])
        if found > SCHEMA_VERSION:
            raise StoreError(f"schema version {found} is newer than this menglong_magic's ({SCHEMA_VERSION}); "
                             "upgrade menglong_magic")
        for version in range(found + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[version](db)
            db.execute(f"PRAGMA user_version = {version}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return found


# ---------------------------------------------------------------------------------------------- location
_configured: Path | None = None


def set_default_store(path: str | os.PathLike[str] | None) -> None:
    """Make ``path`` this process's store (None: back to ``MENGLONG_STORE`` / the data directory).

    A configured store also turns the run log on for agents without a session."""
    global _configured
    _configured = Path(path).expanduser() if path else None


def configured_store_path() -> Path | None:
    """The store set by :func:`set_default_store` or ``MENGLONG_STORE``, if any (the run log is on then)."""
    if _configured is not None:
        return _configured
    env = os.environ.get("MENGLONG_STORE", "").strip()
    return Path(env).expanduser() if env else None


def default_store_path() -> Path:
    """Where sessions go: the configured store, else ``store.sqlite`` in the user's data directory."""
    configured = configured_store_path()
    if configured is not None:
        return configured
    import platformdirs

    return platformdirs.user_data_path("menglong_magic", appauthor=False) / "store.sqlite"


_open: dict[Path, Store] = {}
_open_lock = threading.Lock()


def open_store(path: str | os.PathLike[str] | None = None, timeout: float = 5.0) -> Store:
    """The process's shared :class:`Store` for ``path`` (default: :func:`default_store_path`). A file deleted
    (or replaced) since it was opened is opened anew: writes never go to a deleted file."""
    resolved = Path(path if path is not None else default_store_path()).expanduser().resolve()
    with _open_lock:
        store = _open.get(resolved)
        if store is not None and not store.closed and not store.is_current():
            store.close()
        if store is None or store.closed:
            store = _open[resolved] = Store(resolved, timeout=timeout)
        return store


# ---------------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class SessionInfo:
    name: str
    turns: int
    runs: int
    created: float
    updated: float


@dataclass(frozen=True)
class StoredTurn:
    seq: int
    kind: str  # "turn" | "reset"
    messages: list[dict[str, Any]]
    created: float
    run_id: str | None = None


def _clip(text: Any, limit: int = CLIP) -> Any:
    if text is None:
        return None
    text = redact(text if isinstance(text, str) else json.dumps(text, ensure_ascii=False, default=str))
    return text if len(text) <= limit else text[:limit] + f"… [{len(text) - limit} more characters]"


def settings_summary(settings: RunSettings) -> dict[str, Any]:
    """What a run was asked to do with, without the objects (and without secrets, once redacted)."""
    output = settings.output
    return {
        "mode": settings.mode.value,
        "max_iterations": settings.max_iterations,
        "timeout": settings.timeout,
        "request_timeout": settings.request_timeout,
        "max_retries": settings.max_retries,
        "tools": sorted(settings.tools),
        "toolsets": [getattr(t, "name", type(t).__name__) for t in settings.toolsets],
        "system": _clip(settings.system, 500),
        "model_settings": {k: _clip(v, 200) for k, v in settings.model_settings.items()},
        "output_type": getattr(output, "name", None) if output is not None else None,
        "approve_all": settings.approve_all,
        "usage_limits": None if settings.usage_limits is None else _clip(repr(settings.usage_limits), 200),
    }


def run_row(result: RunResult, settings: RunSettings | None, *, kind: str, agent: str, session: str | None
            ) -> dict[str, Any]:
    """The run-log row of a finished run (every text redacted, long texts clipped)."""
    calls = [{"iteration": it.iteration, "name": c.name, "arguments": _clip(c.arguments), "result": _clip(c.result),
              "error": _clip(c.error), "status": c.status, "duration": round(c.duration, 6),
              "approval": None if c.approval is None else {"approved": c.approval.approved, "by": c.approval.by,
                                                            "reason": _clip(c.approval.reason, 500)}}
             for it in result.iterations for c in it.tool_calls]
    timings = [{"iteration": it.iteration, "duration": round(it.duration, 6), "error": _clip(it.error, 500)}
               for it in result.iterations]
    usage = result.usage
    return {
        "run_id": result.run_id, "session": session, "agent": redact(agent), "kind": kind,
        "task": _clip(result.task), "model": redact(result.model),
        "settings": redact(json.dumps(settings_summary(settings) if settings is not None else {}, default=str)),
        "tool_calls": redact(json.dumps(calls, ensure_ascii=False)),
        "usage": json.dumps(usage.to_data()), "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens, "cost": usage.cost, "stop_reason": result.stop_reason,
        "error": _clip(result.error), "final_output": _clip(result.final_output), "iterations": len(result.iterations),
        "timings": json.dumps(timings), "started": time.time() - result.execution_time,
        "duration": result.execution_time, "pid": os.getpid(),
    }


RUN_COLUMNS = ("run_id", "session", "agent", "kind", "task", "model", "settings", "tool_calls", "usage",
               "input_tokens", "output_tokens", "cost", "stop_reason", "error", "final_output", "iterations",
               "timings", "started", "duration", "pid")


# ---------------------------------------------------------------------------------------------- the store
class Store:
    """One SQLite file (WAL) holding sessions (their turns) and the run log. Thread-safe; many processes may
    share the file. Use :func:`open_store` to share one connection per file in a process."""

    def __init__(self, path: str | os.PathLike[str], timeout: float = 5.0):
        self.path = Path(path).expanduser()
        self.closed = False
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE takes the write lock up front, so
            # two writers queue instead of failing half-way through a turn).
            self._db = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit survives the process being killed (not a power cut before checkpoint).
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA secure_delete=ON")  # forgotten sessions do not linger in free pages
            migrate(self._db)
            self._inode = os.stat(self.path).st_ino
        except (sqlite3.Error, OSError, StoreError) as exc:
            db = self.__dict__.get("_db")
            if db is not None:
                db.close()  # an unusable file: no connection left open on it
            self.closed = True
            if isinstance(exc, StoreError):
                raise
            if isinstance(exc, OSError):
                raise StoreError(f"cannot open the store {self.path}: {exc.strerror or exc}") from None
            raise StoreError(_describe(self.path, exc)) from None

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    def is_current(self) -> bool:
        """Whether the file this store opened is still the one at its path (not deleted or replaced)."""
        try:
            return os.stat(self.path).st_ino == self._inode
        except OSError:
            return False

    def close(self) -> None:
        with self._lock:
            if not self.closed:
                self._db.close()
                self.closed = True

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------- transactions
    def _write(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    value = work(self._db)
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StoreError(_describe(self.path, exc)) from None
            return value

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(_describe(self.path, exc)) from None

    # -------------------------------------------------------------- writing
    def save(self, turns: Iterable[tuple[str, str, str | None, list[dict[str, Any]], float]] = (),
             runs: Iterable[dict[str, Any]] = ()) -> dict[str, tuple[int, int]]:
        """Write turns ``(session, kind, run_id, messages, created)`` and run-log rows in one transaction.

        Returns, per session written, its last turn number before and after the write."""
        turn_rows = [(session, kind, run_id, redact(json.dumps(messages, ensure_ascii=False, default=str)), created)
                     for session, kind, run_id, messages, created in turns]
        run_rows = [tuple(row.get(c) for c in RUN_COLUMNS) for row in runs]

        seqs: dict[str, tuple[int, int]] = {}

        def work(db: sqlite3.Connection) -> None:
            for session, kind, run_id, text, created in turn_rows:
                if session not in seqs:
                    before = db.execute("SELECT COALESCE(MAX(seq), 0) FROM turns WHERE session = ?",
                                        (session,)).fetchone()[0]
                    seqs[session] = (before, before)
                db.execute("INSERT INTO sessions (name, created, updated) VALUES (?, ?, ?) "
                           "ON CONFLICT(name) DO UPDATE SET updated = excluded.updated", (session, created, created))
                db.execute("INSERT INTO turns (session, seq, kind, run_id, messages, created) VALUES "
                           "(?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM turns WHERE session = ?), ?, ?, ?, ?)",
                           (session, session, kind, run_id, text, created))
                seqs[session] = (seqs[session][0], seqs[session][1] + 1)
            if run_rows:
                db.executemany(f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) VALUES "
                               f"({', '.join('?' * len(RUN_COLUMNS))})", run_rows)

        if turn_rows or run_rows:
            self._write(work)
        return seqs

    def last_seq(self, session: str) -> int:
        """The number of ``session``'s last turn (0: none)."""
        return int(self._read("SELECT COALESCE(MAX(seq), 0) FROM turns WHERE session = ?", (session,))[0][0])

    def save_turn(self, session: str, messages: list[dict[str, Any]], run_id: str | None = None) -> None:
        """Append one turn (its messages) to ``session``."""
        self.save([(session, "turn", run_id, messages, time.time())])

    def mark_reset(self, session: str) -> bool:
        """Record that ``session``'s conversation was cleared (later loads start after it). False if the
        session has no turns (nothing to keep)."""
        if not self._read("SELECT 1 FROM sessions WHERE name = ?", (session,)):
            return False
        self.save([(session, "reset", None, [], time.time())])
        return True

    def forget(self, session: str, runs: bool = False) -> tuple[int, int]:
        """Delete ``session`` (and its run-log rows if ``runs``): (turns deleted, runs deleted)."""
        def work(db: sqlite3.Connection) -> tuple[int, int]:
            turns = db.execute("DELETE FROM turns WHERE session = ?", (session,)).rowcount
            db.execute("DELETE FROM sessions WHERE name = ?", (session,))
            logged = db.execute("DELETE FROM runs WHERE session = ?", (session,)).rowcount if runs else 0
            return turns, logged

        counts: tuple[int, int] = self._write(work)
        with self._lock:  # the deleted pages also leave the write-ahead log
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass  # another process reading: its checkpoint will do it
        return counts

    def import_json(self, path: str | os.PathLike[str], name: str | None = None) -> str:
        """Add a session written by :meth:`export` (``--json``) under ``name`` (default: its own name)."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict) or "turns" not in data:
            raise StoreError(f"{path}: not a session export (no 'turns')")
        session = name or data.get("session")
        if not session:
            raise StoreError(f"{path}: the export names no session; give one")
        if self._read("SELECT 1 FROM sessions WHERE name = ?", (session,)):
            raise StoreError(f"a session {session!r} exists already; import it under another name")
        self.save([(session, t.get("kind", "turn"), t.get("run_id"), t["messages"], t.get("created", time.time()))
                   for t in data["turns"]])
        return str(session)

    # -------------------------------------------------------------- reading
    def load(self, session: str) -> list[dict[str, Any]]:
        """The conversation of ``session`` since its last reset: its messages, oldest first."""
        rows = self._read(
            "SELECT messages FROM turns WHERE session = ? AND kind = 'turn' AND seq > "
            "COALESCE((SELECT MAX(seq) FROM turns WHERE session = ? AND kind = 'reset'), 0) ORDER BY seq",
            (session, session))
        # One parse of the joined arrays: a third faster than one json.loads per turn on 10,000 turns.
        joined = ",".join(text[1:-1] for (text,) in rows if text != "[]")
        return json.loads(f"[{joined}]")  # type: ignore[no-any-return]

    def turns(self, session: str, last: int | None = None) -> list[StoredTurn]:
        """Every stored turn of ``session`` (resets included), oldest first; the ``last`` N only if given."""
        sql = "SELECT seq, kind, messages, created, run_id FROM turns WHERE session = ? ORDER BY seq DESC"
        params: list[Any] = [session]
        if last is not None:
            sql += " LIMIT ?"
            params.append(last)
        rows = self._read(sql, params)
        return [StoredTurn(seq, kind, json.loads(text), created, run_id)
                for seq, kind, text, created, run_id in reversed(rows)]

    def sessions(self) -> list[SessionInfo]:
        """Every session, most recently updated first."""
        rows = self._read(
            "SELECT s.name, (SELECT COUNT(*) FROM turns t WHERE t.session = s.name AND t.kind = 'turn'), "
            "(SELECT COUNT(*) FROM runs r WHERE r.session = s.name), s.created, s.updated "
            "FROM sessions s ORDER BY s.updated DESC")
        return [SessionInfo(*row) for row in rows]

    def has_session(self, session: str) -> bool:
        return bool(self._read("SELECT 1 FROM sessions WHERE name = ?", (session,)))

    def runs(self, *, session: str | None = None, model: str | None = None, status: str | None = None,
             since: float | str | datetime | None = None, until: float | str | datetime | None = None,
             limit: int | None = None) -> RunLog:
        """Run-log rows, newest first, filtered (``status`` is a stop reason; ``"ok"`` means completed;
        ``since``/``until``: a timestamp, a datetime or an ISO date/time)."""
        where, params = [], []
        if session is not None:
            where.append("session = ?")
            params.append(session)
        if model is not None:
            where.append("model = ?")
            params.append(model)
        if status is not None:
            where.append("stop_reason = ?")
            params.append("completed" if status == "ok" else status)
        if since is not None:
            where.append("started >= ?")
            params.append(_timestamp(since))
        if until is not None:
            where.append("started < ?")
            params.append(_timestamp(until, end=True))
        sql = f"SELECT {', '.join(RUN_COLUMNS)} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY started DESC, id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return RunLog([dict(zip(RUN_COLUMNS, row, strict=True)) for row in self._read(sql, params)])

    # -------------------------------------------------------------- export
    def export(self, session: str, path: str | os.PathLike[str] | None = None, fmt: str = "json") -> str:
        """``session`` as JSON (every turn, re-importable with :meth:`import_json`) or Markdown (readable);
        written to ``path`` if given. Returns the text."""
        if not self.has_session(session):
            raise StoreError(f"no session {session!r} in {self.path}")
        turns = self.turns(session)
        if fmt == "json":
            text = json.dumps({"format": "menglong_magic.session", "schema": SCHEMA_VERSION, "session": session,
                               "turns": [{"seq": t.seq, "kind": t.kind, "run_id": t.run_id, "created": t.created,
                                          "messages": t.messages} for t in turns]},
                              ensure_ascii=False, indent=1)
        elif fmt in ("md", "markdown"):
            text = session_markdown(session, turns)
        else:
            raise ValueError(f"unknown export format {fmt!r} (json or md)")
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text


def _describe(path: Path, exc: sqlite3.Error) -> str:
    message = str(exc) or type(exc).__name__
    if "locked" in message or "busy" in message:
        return f"the store {path} is locked by another process ({message})"
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
        return f"the store {path} is unreadable ({message}); move or delete it"
    return f"the store {path} failed: {message}"


def _timestamp(value: float | str | datetime, end: bool = False) -> float:
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        day_only = len(text) == 10
        value = datetime.fromisoformat(text)
        if day_only and end:  # --until 2026-11-30 includes that whole day
            return value.timestamp() + 86400
    return value.timestamp()


def _content_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):  # content parts
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


def session_markdown(session: str, turns: list[StoredTurn]) -> str:
    """A readable Markdown transcript of a session's turns."""
    lines = [f"# Session {session}", ""]
    for turn in turns:
        when = datetime.fromtimestamp(turn.created).isoformat(timespec="seconds")
        if turn.kind == "reset":
            lines += [f"*— conversation reset at {when} —*", ""]
            continue
        lines += [f"## Turn {turn.seq} · {when}", ""]
        for message in turn.messages:
            role = message.get("role", "?")
            if role == "tool":
                lines += [f"**tool result** (`{message.get('tool_call_id', '')}`):", "", "```",
                          _content_text(message), "```", ""]
                continue
            text = _content_text(message)
            if text:
                lines += [f"**{role}**:", "", text, ""]
            for call in message.get("tool_calls") or ():
                fn = call.get("function", {})
                lines += [f"**{role}** calls `{fn.get('name', '?')}` (`{call.get('id', '')}`):", "", "```json",
                          str(fn.get("arguments", "")), "```", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- run log view
class RunLog(Sequence[dict[str, Any]]):
    """Run-log rows (dicts, newest first): a text table as repr, an HTML table in notebooks, ``to_pandas()``."""

    SHOWN = ("started", "session", "kind", "model", "stop_reason", "iterations", "tools", "tokens", "cost",
             "duration", "task")

    def __init__(self, rows: list[dict[str, Any]], *, empty: str = "no runs"):
        self.rows = rows
        #: What an empty log says (why there is nothing to show).
        self.empty = empty

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: Any) -> Any:
        return self.rows[index]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    def to_pandas(self) -> Any:
        """A DataFrame, one row per run (JSON columns parsed; ``started`` as a datetime)."""
        import pandas as pd

        frame = pd.DataFrame([{**row, "settings": json.loads(row["settings"] or "{}"),
                               "tool_calls": json.loads(row["tool_calls"] or "[]"),
                               "usage": json.loads(row["usage"] or "{}"),
                               "timings": json.loads(row["timings"] or "[]")} for row in self.rows],
                             columns=list(RUN_COLUMNS))
        frame["started"] = pd.to_datetime(frame["started"], unit="s")
        return frame

    def _cells(self, row: dict[str, Any]) -> dict[str, str]:
        from .usage import format_cost

        calls = json.loads(row["tool_calls"] or "[]")
        tokens = None if row["input_tokens"] is None else (row["input_tokens"] or 0) + (row["output_tokens"] or 0)
        task = (row["task"] or "").replace("\n", " ")
        return {
            "started": datetime.fromtimestamp(row["started"]).strftime("%Y-%m-%d %H:%M:%S"),
            "session": row["session"] or "", "kind": row["kind"] or "", "model": row["model"] or "",
            "stop_reason": row["stop_reason"] or "", "iterations": str(row["iterations"]),
            "tools": str(len(calls)), "tokens": "?" if tokens is None else str(tokens),
            "cost": "" if row["cost"] is None else format_cost(row["cost"]),
            "duration": f"{row['duration']:.2f}s", "task": shorten(task, 60),
        }

    def __repr__(self) -> str:
        if not self.rows:
            return f"RunLog({self.empty})"
        cells = [self._cells(r) for r in self.rows]
        widths = {c: max(len(c), *(len(row[c]) for row in cells)) for c in self.SHOWN}
        lines = ["  ".join(c.ljust(widths[c]) for c in self.SHOWN).rstrip()]
        lines += ["  ".join(row[c].ljust(widths[c]) for c in self.SHOWN).rstrip() for row in cells]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from html import escape

        if not self.rows:
            return f'<p class="mm-runlog">{escape(self.empty)}</p>'
        head = "".join(f"<th>{escape(c)}</th>" for c in self.SHOWN)
        body = "".join("<tr>" + "".join(f"<td>{escape(v)}</td>" for v in self._cells(r).values()) + "</tr>"
                       for r in self.rows)
        return f'<table class="mm-runlog"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


# ---------------------------------------------------------------------------------------------- an agent's side
def report(message: str) -> None:
    """A store problem, in one line on stderr (the run goes on in memory)."""
    print(f"menglong_magic: {message}", file=sys.stderr, flush=True)


@dataclass
class AgentPersistence:
    """What one agent saves: the turns of its ``session`` (if named) and the run log, to its store.

    ``store``: a :class:`Store`, a path, or None (the configured store; with a session and nothing configured,
    the data directory's). Turns that could not be written (store locked or unreadable) wait in ``backlog``
    and are written, in order, with the next turn that can be.
    """

    session: str | None = None
    store_spec: Store | str | os.PathLike[str] | None = None
    backlog: list[tuple[str, str, str | None, list[dict[str, Any]], float]] = field(default_factory=list)
    run_backlog: list[dict[str, Any]] = field(default_factory=list)
    last_error: str | None = None
    #: The session's last turn number as this agent knows it (None: not loaded): a write that finds another
    #: number means another kernel or agent changed the session meanwhile (reported once).
    known_seq: int | None = None
    shared_reported: bool = field(default=False, init=False)
    # Runs of one agent may end on several threads (each with its own loop): the backlogs change under this lock.
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.session is not None and (not isinstance(self.session, str) or not self.session.strip()):
            raise ValueError(f"session must be a non-empty name, not {self.session!r}")

    @property
    def enabled(self) -> bool:
        return self.session is not None or self.store_spec is not None or configured_store_path() is not None

    def store(self) -> Store | None:
        """The store to write to now (None: persistence is off). Raises StoreError if it cannot be opened."""
        spec = self.store_spec
        if isinstance(spec, Store):
            return spec
        if spec is not None:
            return open_store(spec)
        if self.session is None and configured_store_path() is None:
            return None
        return open_store()

    def load(self) -> list[dict[str, Any]]:
        """The session's saved conversation ([] if none, or if the store cannot be read: reported)."""
        if self.session is None:
            return []
        try:
            store = self.store()
            if store is None:
                return []
            with self._lock:
                self.known_seq = store.last_seq(self.session)
                return store.load(self.session)
        except StoreError as exc:
            self._report(str(exc), f"{exc}; session {self.session!r} starts empty and continues in memory")
            return []

    def detached(self) -> AgentPersistence:
        """The same store without the session (for forks: their turns are not the session's)."""
        return AgentPersistence(None, self.store_spec)

    def finished(self, result: RunResult, settings: RunSettings | None, *, kind: str, agent: str,
                 committed: bool) -> None:
        """A run ended (called by the turn, after its messages were committed to ``messages``): save its turn
        (if it belongs to the session) and its run-log row, in one transaction. Never raises."""
        try:
            if not self.enabled:
                return
            with self._lock:
                self._finished(result, settings, kind=kind, agent=agent, committed=committed)
        except Exception as exc:  # persistence must never break a run
            problem = f"the run log failed ({type(exc).__name__}: {redact(str(exc))})"
            self._report(problem, problem)

    def _finished(self, result: RunResult, settings: RunSettings | None, *, kind: str, agent: str,
                  committed: bool) -> None:
        if committed and self.session is not None and result.messages:
            self.backlog.append((self.session, "turn", result.run_id, [dict(m) for m in result.messages],
                                 time.time()))
        self.run_backlog.append(run_row(result, settings, kind=kind, agent=agent, session=self.session))
        self.flush()

    def flush(self) -> bool:
        """Write the backlog; False (reported once per distinct problem) if the store cannot take it now."""
        with self._lock:
            return self._flush()

    def _flush(self) -> bool:
        if not self.backlog and not self.run_backlog:
            return True
        try:
            store = self.store()
            if store is None:
                self.backlog.clear()
                self.run_backlog.clear()
                return True
            seqs = store.save(self.backlog, self.run_backlog)
        except StoreError as exc:
            where = f"session {self.session!r}" if self.session else "the run"
            self._report(str(exc), f"{exc}; {where} continues in memory (turns not saved yet are kept and "
                                   "written when the store can take them)")
            return False
        self.backlog.clear()
        self.run_backlog.clear()
        self.last_error = None
        if self.session in seqs:
            before, after = seqs[self.session]
            if self.known_seq is not None and before != self.known_seq and not self.shared_reported:
                self.shared_reported = True
                report(f"session {self.session!r} was also changed elsewhere "
                             "(another kernel or agent) since this agent loaded it: both append to it, in the order "
                             "their turns end; this agent's conversation does not include the other's turns")
            self.known_seq = after
        return True

    def reset(self) -> bool:
        """The in-memory conversation was cleared: later loads start here (the earlier turns stay stored, for
        ``%agent_history`` and export). True if a stored session was kept."""
        if self.session is None:
            return False
        with self._lock:
            return self._reset(self.session)

    def _reset(self, session: str) -> bool:
        try:
            store = self.store()
            if store is None or (not self.backlog and not store.has_session(session)):
                return False
        except StoreError as exc:
            self._report(str(exc), str(exc))
            return False
        self.backlog.append((session, "reset", None, [], time.time()))
        self._flush()
        return True

    def _report(self, key: str, message: str) -> None:
        """Report ``message`` unless the same problem (``key``) was the last one reported."""
        if key != self.last_error:
            report(message)
        self.last_error = key
