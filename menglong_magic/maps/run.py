"""``agent.map_async(inputs, prompt)``: one isolated run per input, in parallel, with an optional journal.

A map is a batch with a journal. Each input (a string, a dict, a pandas DataFrame row or Series value)
is formatted into the prompt template and run as an isolated chat turn (no conversation history; the
agent's tools if it has any). Outputs come back in input order in a :class:`MapResult`. Missing values
(None, NaN, NaT, ``pd.NA``, a missing category) are empty fields in the prompt; a format spec over one
(``{date:%Y-%m-%d}`` on NaT) is that item's :class:`MapItemError`, not the map's (see :func:`format_prompt`).

The journal (``journal="runs.sqlite"``) is the source of truth: every item that finishes is committed
to SQLite within milliseconds by the journal's writer thread (never on the event loop), keyed by a hash
of everything that determines its answer (the model, the system prompt, the mode, the tools' schemas, the
model settings, the output type and the item's prompt text).
Running the same map again after a crash, an interrupt or a kernel restart requests only the items not
in the journal yet; identical prompts within one call are requested once. Failed items are recorded
too (with their error) but requested again on the next run: nothing was paid for them. A journal that
another process keeps locked costs no answer: the map completes with every answer in its result, warns
once, and the writer commits the rows as soon as the lock is free (see :class:`Journal`).

Pacing: ``max_concurrency="auto"`` lets the agent's adaptive limiter set the pace (see
:mod:`~menglong_magic.agent.limiter`); items are admitted in input order, never many more than the
limiter lets run, so a map of 100,000 items holds only a window of them in memory at a time.

Executors: ``executor="local"`` (default) runs the items on this event loop; ``executor="ray"`` or a
:class:`~menglong_magic.maps.ray.RayExecutor` runs them on Ray workers. Either way the journal,
dedup, events and the result are handled here, on the driver: an executor only runs :class:`MapItem` s and
reports each one's :class:`ItemOutcome` to the :class:`MapJob` (see :class:`MapExecutor`).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import decimal
import hashlib
import json
import sqlite3
import threading
import time
import typing
import uuid
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from ..agent.options import resolve_settings
from ..agent.settings import RunSettings
from ..events import BatchFinished, BatchItemFinished, BatchItemStarted, BatchStarted, Event, EventCallback
from ..secrets import redact
from ..usage import RunUsage

if TYPE_CHECKING:
    from ..agent.chat_agent import ChatAgent

JOURNAL_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    key TEXT PRIMARY KEY,
    idx INTEGER NOT NULL,
    prompt TEXT NOT NULL,
    output TEXT,
    error TEXT,
    usage TEXT,
    created REAL NOT NULL
)
"""


#: How long a map waits at its end for its journal rows to be committed before it returns without them
#: (they stay queued in the journal's writer, which writes them once the file is free).
JOURNAL_FLUSH_TIMEOUT = 2.0


@dataclass(frozen=True)
class MapItemsRestored(Event):
    """``count`` items of the map were answered from the journal (``deduplicated``: repeats of another item)."""

    count: int
    deduplicated: int = 0


class MapItemError(RuntimeError):
    """An item's run ended without an answer (timeout, max iterations, invalid typed output, ...)."""

    def __init__(self, message: str, stop_reason: str):
        super().__init__(message)
        self.stop_reason = stop_reason


@dataclass(frozen=True)
class MapItem:
    """One distinct item to run: its journal key, its first index in the input and its prompt."""

    key: str
    index: int
    prompt: str


@dataclass
class ItemOutcome:
    """How one item's run ended: ``status`` "ok" (``data``: the output's JSON form, ``text``: the answer
    text) or "error" (``error``: a message, ``stop_reason``). ``value``/``exception`` are the live objects
    when the item ran in this process (None when it came back from another one)."""

    status: str
    data: Any = None
    text: str | None = None
    error: str | None = None
    stop_reason: str = "completed"
    usage: RunUsage = dataclasses.field(default_factory=RunUsage)
    duration: float = 0.0
    value: Any = None
    exception: BaseException | None = None
    has_value: bool = False


class MapJob:
    """What an executor is given: the agent, the map's settings and items, and two callbacks that keep the
    journal, the events and the result on the driver (:meth:`started`, :meth:`finished`)."""

    def __init__(self, agent: ChatAgent, settings: RunSettings, items: list[MapItem], *, batch_id: str,
                 max_concurrency: int | str | None, on_event: EventCallback | None,
                 started: Callable[[MapItem], None], finished: Callable[[MapItem, ItemOutcome], None]):
        self.agent = agent
        self.settings = settings
        self.items = items
        self.batch_id = batch_id
        self.max_concurrency = max_concurrency
        self.on_event = on_event
        self._started = started
        self._finished = finished

    def started(self, item: MapItem) -> None:
        """The item's run began (emits BatchItemStarted)."""
        self._started(item)

    def finished(self, item: MapItem, outcome: ItemOutcome) -> None:
        """The item's run ended: journal it, emit BatchItemFinished, fill the result. Raises the item's error
        when the map was called with ``return_exceptions=False`` (the executor should then stop)."""
        self._finished(item, outcome)


@typing.runtime_checkable
class MapExecutor(typing.Protocol):
    """Runs a map's items somewhere and reports each outcome with ``job.finished`` (in any order)."""

    async def run(self, job: MapJob) -> None: ...


async def run_item(agent: ChatAgent, settings: RunSettings, prompt: str, item_id: str,
                   on_event: EventCallback | None = None) -> ItemOutcome:
    """Run one item as an isolated turn and describe how it ended (shared by every executor)."""
    t0 = time.perf_counter()
    result = await agent.run_turn(prompt, settings, kind="batch_item", on_event=on_event, messages=[], run_id=item_id)
    duration = time.perf_counter() - t0
    if result.stop_reason == "completed":
        value, data = _output_value(settings, result)
        return ItemOutcome("ok", data=data, text=result.final_output, usage=result.usage, duration=duration,
                           value=value, has_value=True)
    if result.stop_reason == "cancelled":
        raise asyncio.CancelledError()
    message = result.error or result.stop_reason
    return ItemOutcome("error", error=message, stop_reason=result.stop_reason, usage=result.usage,
                       duration=duration, exception=result.exception)


class LocalExecutor:
    """Runs the items on the running event loop, paced by the agent's limiter (the default executor)."""

    async def run(self, job: MapJob) -> None:
        async def one(item: MapItem) -> None:
            job.started(item)
            t0 = time.perf_counter()
            try:
                outcome = await run_item(job.agent, job.settings, item.prompt, f"{job.batch_id}-{item.index}",
                                         job.on_event)
            except asyncio.CancelledError:
                job.finished(item, ItemOutcome("cancelled", error="cancelled", duration=time.perf_counter() - t0))
                raise
            job.finished(item, outcome)

        await run_admitted(job.agent, job.items, one, job.max_concurrency)


def local_or_given(executor: Any) -> MapExecutor:
    """``"local"``/None (a :class:`LocalExecutor`) or an executor object. Names of other executors ("ray") are
    resolved above this module (:func:`menglong_magic.maps.executors.resolve_executor`): they import it."""
    if executor is None or executor == "local":
        return LocalExecutor()
    if isinstance(executor, str) or not callable(getattr(executor, "run", None)):
        raise ValueError(f'executor must be "local", "ray" or an object with an async run(job) method, '
                         f'not {executor!r}')
    return executor  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------- journal
class JournalUnavailableWarning(UserWarning):
    """The journal could not be written for a while (locked by another process, busy, ...): the answers
    are in the map's result, and the journal's writer keeps trying to write them."""


_UPSERT = ("INSERT INTO items (key, idx, prompt, output, error, usage, created) VALUES (?, ?, ?, ?, ?, ?, ?) "
           "ON CONFLICT(key) DO UPDATE SET idx=excluded.idx, output=excluded.output, error=excluded.error, "
           "usage=excluded.usage, created=excluded.created WHERE items.error IS NOT NULL")


@dataclass(frozen=True)
class _Row:
    key: str
    index: int
    prompt: str
    output: Any
    error: str | None
    usage: RunUsage | None
    created: float

    def keeps_over(self, newer: _Row) -> bool:
        """An answer is never replaced (as in the table); anything replaces an error."""
        return self.error is None

    def params(self) -> tuple[Any, ...]:
        return (self.key, self.index, self.prompt, None if self.error is not None else json.dumps(self.output),
                self.error, usage_to_json(self.usage), self.created)


_open_journals: weakref.WeakSet[Journal] = weakref.WeakSet()
#: How long the journal's writer collects rows before committing them together (seconds).
BATCH_WINDOW = 0.01


class Journal:
    """A SQLite file (WAL) with one row per finished map item: key, index, prompt, output JSON, error,
    usage, created. One journal may serve many maps (keys are content hashes).

    :meth:`record` never touches the file: it queues the row and returns (O(1), no I/O on the caller's
    thread, so a map's event loop never waits for the disk or for a lock). A writer thread commits what
    is queued in one transaction at a time (rows that arrive during a commit go in the next one), within
    milliseconds when the file is free. When another process holds the write lock, each attempt waits
    up to ``busy_timeout`` seconds and the writer retries with a growing pause (at most
    ``retry_pause``): queued rows are kept in memory, :attr:`last_error` says why, and they are written
    as soon as the lock is free. :meth:`answered` sees queued rows too. :meth:`flush` waits (bounded)
    until everything queued is on disk; :meth:`close` flushes (bounded) and, if rows are still queued
    then, leaves the writer running until they are written (and tries again at interpreter exit).
    """

    def __init__(self, path: str | Path, *, busy_timeout: float = 1.0, retry_pause: float = 1.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.busy_timeout = busy_timeout
        self.retry_pause = retry_pause
        #: Why the last write attempt failed (None: the journal keeps up).
        self.last_error: str | None = None
        #: Write attempts that failed (the rows were kept and tried again).
        self.failed_writes = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._pending: dict[str, _Row] = {}
        self._writing: dict[str, _Row] = {}
        self._closed = False
        self._read_lock = threading.Lock()
        self._reader = self._connect(create=False)
        with contextlib.suppress(sqlite3.Error):  # a locked file: the writer creates the table once it can
            self._reader.execute(JOURNAL_SCHEMA)
        self._writer = threading.Thread(target=self._write_loop, name=f"journal-writer {self.path.name}", daemon=True)
        self._writer.start()
        _open_journals.add(self)

    def _connect(self, create: bool = True) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False,
                             timeout=self.busy_timeout)
        try:
            db.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer, nor it for them
            # NORMAL in WAL mode: a commit survives the process being killed (not a power cut before checkpoint).
            db.execute("PRAGMA synchronous=NORMAL")
            if create:
                db.execute(JOURNAL_SCHEMA)
        except sqlite3.Error:
            if create:
                db.close()
                raise
        return db

    def __repr__(self) -> str:
        queued = self.pending
        return f"Journal({str(self.path)!r}{f', {queued} rows queued' if queued else ''})"

    # ------------------------------------------------------------------ writing
    def record(self, key: str, index: int, prompt: str, output: Any = None, error: str | None = None,
               usage: RunUsage | None = None) -> None:
        """Queue one finished item for the writer (an answer replaces an earlier error; an error never
        replaces an answer). Returns at once."""
        row = _Row(key, index, prompt, output, error, usage, time.time())
        with self._lock:
            if self._closed:
                raise ValueError(f"{self!r} is closed")
            earlier = self._pending.get(key) or self._writing.get(key)
            if earlier is not None and earlier.keeps_over(row):
                return
            self._pending[key] = row
            self._changed.notify_all()

    @property
    def pending(self) -> int:
        """Rows queued or being written, not yet committed."""
        with self._lock:
            return len(self._pending) + len(self._writing)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued row is committed (at most ``timeout`` seconds); whether they all were."""
        with self._lock:
            return self._changed.wait_for(lambda: not self._pending and not self._writing, timeout)

    def _write_loop(self) -> None:
        db: sqlite3.Connection | None = None
        pause = 0.0
        while True:
            with self._lock:
                self._changed.wait_for(lambda: self._pending or self._closed)
                closed = self._closed
            if not closed:
                # Gather the rows of the next few ms into this transaction: one wake-up (and one GIL hand-off
                # with the event loop's thread) per batch, not per row.
                time.sleep(BATCH_WINDOW)
            with self._lock:
                if not self._pending:
                    break  # closed, and everything is written
                self._writing, self._pending = self._pending, {}
                batch = list(self._writing.values())
            try:
                if db is None:
                    db = self._connect()
                db.execute("BEGIN IMMEDIATE")
                try:
                    db.executemany(_UPSERT, [row.params() for row in batch])
                    db.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                    raise
            except Exception as exc:  # locked, busy, disk full, ...: keep the rows and try again
                with self._lock:
                    for key, row in self._writing.items():
                        newer = self._pending.get(key)
                        if newer is None or row.keeps_over(newer):
                            self._pending[key] = row
                    self._writing = {}
                    self.last_error = redact(f"{type(exc).__name__}: {exc}")
                    self.failed_writes += 1
                    self._changed.notify_all()
                if db is not None and not isinstance(exc, sqlite3.OperationalError):
                    with contextlib.suppress(sqlite3.Error):
                        db.close()
                    db = None
                pause = min(max(pause * 2, 0.05), self.retry_pause)
                time.sleep(pause)
                continue
            pause = 0.0
            with self._lock:
                self._writing = {}
                self.last_error = None
                self._changed.notify_all()
        if db is not None:
            db.close()

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop taking rows, wait (at most ``timeout`` s) for the queued ones to be written, close the file.
        Rows still queued then (the file stays locked) are written by the writer when it can."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._changed.notify_all()
        self._writer.join(timeout)
        with self._read_lock:
            self._reader.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        """How many answers are committed (after waiting, bounded, for the queued rows)."""
        self.flush(self.busy_timeout * 5)
        with self._read_lock:
            return int(self._reader.execute("SELECT COUNT(*) FROM items WHERE error IS NULL").fetchone()[0])

    def answered(self, keys: Iterable[str]) -> dict[str, tuple[Any, RunUsage]]:
        """The successful rows among ``keys`` (committed or queued): key -> (output JSON value, usage).

        A journal that cannot be read (locked in rollback mode, ...) counts as empty: the map asks again
        rather than failing."""
        found: dict[str, tuple[Any, RunUsage]] = {}
        keys = list(keys)
        try:
            with self._read_lock:
                for start in range(0, len(keys), 500):
                    chunk = keys[start:start + 500]
                    marks = ",".join("?" * len(chunk))
                    for key, output, usage in self._reader.execute(
                            f"SELECT key, output, usage FROM items WHERE error IS NULL AND key IN ({marks})", chunk):
                        found[key] = (json.loads(output), usage_from_json(usage))
        except sqlite3.Error as exc:
            self.last_error = redact(f"{type(exc).__name__}: {exc}")
        with self._lock:
            wanted = set(keys)
            for queue in (self._writing, self._pending):
                for key, row in queue.items():
                    if row.error is None and key in wanted and key not in found:
                        found[key] = (row.output, row.usage if row.usage is not None else RunUsage())
        return found

    def rows(self) -> list[dict[str, Any]]:
        """Every committed row, oldest first (for inspection; waits, bounded, for the queued rows first)."""
        self.flush(self.busy_timeout * 5)
        with self._read_lock:
            cursor = self._reader.execute(
                "SELECT key, idx, prompt, output, error, usage, created FROM items ORDER BY created")
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor]


@atexit.register
def _flush_journals_at_exit() -> None:
    # Rows still queued (a journal locked by another process until now) get one last bounded chance.
    for journal in list(_open_journals):
        journal.flush(timeout=5.0)


def usage_to_json(usage: RunUsage | None) -> str | None:
    return None if usage is None else json.dumps(usage.to_data())


def usage_from_json(text: str | None) -> RunUsage:
    return RunUsage.from_data(json.loads(text)) if text else RunUsage()


# ---------------------------------------------------------------------------------------------- result
class MapResult(Sequence[Any]):
    """A map's outputs in input order: ``result[i]`` is the answer (text, or the ``output_type`` value)
    or the item's exception. ``errors`` maps failed indices to exceptions; ``usage`` sums the requests made
    by this call (``restored`` items came from the journal at no cost)."""

    def __init__(self, prompts: list[str], outputs: list[Any], errors: dict[int, BaseException], usage: RunUsage,
                 *, cached: list[bool], labels: list[Any] | None, requested: int, restored: int,
                 deduplicated: int, duration: float):
        self.prompts = prompts
        self.outputs = outputs
        self.errors = errors
        self.usage = usage
        self.cached = cached
        self.labels = labels
        self.requested = requested
        self.restored = restored
        self.deduplicated = deduplicated
        self.duration = duration

    def __len__(self) -> int:
        return len(self.outputs)

    @overload
    def __getitem__(self, index: int) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...
    def __getitem__(self, index: int | slice) -> Any:
        return self.outputs[index]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.outputs)

    @property
    def ok(self) -> int:
        return len(self.outputs) - len(self.errors)

    def __repr__(self) -> str:
        return (f"MapResult({len(self)} items: {self.ok} ok, {len(self.errors)} failed, {self.restored} from the "
                f"journal, {self.requested} requested; {self.usage.describe()})")

    def to_pandas(self) -> Any:
        """A DataFrame (indexed like the input DataFrame/Series, if any): prompt, output, error, cached."""
        import pandas as pd

        return pd.DataFrame({
            "prompt": self.prompts,
            "output": [None if i in self.errors else o for i, o in enumerate(self.outputs)],
            "error": [redact(str(self.errors[i]) or type(self.errors[i]).__name__) if i in self.errors else None
                      for i in range(len(self.outputs))],
            "cached": self.cached,
        }, index=self.labels if self.labels is not None else None)


# ---------------------------------------------------------------------------------------------- inputs
def input_rows(inputs: Any) -> tuple[list[Any], list[Any] | None, str | None]:
    """(rows, index labels or None, a Series' name): strings/scalars, or dicts for frames and mappings."""
    module = type(inputs).__module__
    if module.startswith("pandas"):
        if hasattr(inputs, "to_dict") and hasattr(inputs, "columns"):  # DataFrame
            labels = list(inputs.index)
            return inputs.to_dict("records"), labels, None
        if hasattr(inputs, "tolist") and hasattr(inputs, "index"):  # Series
            name = inputs.name if isinstance(inputs.name, str) else None
            return inputs.tolist(), list(inputs.index), name
    if isinstance(inputs, (str, bytes)):
        raise TypeError("map inputs must be an iterable of items, not one string (wrap it in a list)")
    return list(inputs), None, None


MISSING_TEXT = ""
"""What a missing value (None, NaN, NaT, ``pd.NA``, a missing category) becomes in a prompt: an empty field."""


class PromptFormatError(ValueError):
    """One item's prompt cannot be built from its values (a format spec over a missing or mistyped value).

    :func:`map_async` makes it that item's :class:`MapItemError` (``stop_reason="prompt_format"``); the
    other items run.
    """


def is_missing(value: Any) -> bool:
    """None, a float/Decimal NaN, and pandas' and numpy's missing scalars (``NaT``, ``pd.NA``, NaN)."""
    if value is None:
        return True
    if isinstance(value, float):
        return value != value  # NaN is the one value unequal to itself
    if isinstance(value, decimal.Decimal):
        return value.is_nan()
    if type(value).__module__.startswith(("pandas", "numpy")):
        try:
            import pandas as pd
        except ImportError:  # numpy alone: its NaN and NaT are unequal to themselves too
            pd = None
        try:
            if pd is None:
                return bool(value != value)
            return bool(pd.api.types.is_scalar(value) and pd.isna(value))
        except (TypeError, ValueError):  # arrays and other non-scalars are values, not gaps
            return False
    return False


class _Missing:
    """A missing value inside ``str.format``: renders as :data:`MISSING_TEXT`; a format spec over it (the
    ``%Y-%m-%d`` of ``{date:%Y-%m-%d}`` on NaT) has nothing to apply to and fails that item."""

    __slots__ = ("field", "value")

    def __init__(self, field: str, value: Any):
        self.field = field
        self.value = value

    def __format__(self, spec: str) -> str:
        if spec:
            raise PromptFormatError(f"prompt field {self.field!r} is missing ({self.value!r}), so its format spec "
                                    f"{spec!r} cannot apply")
        return MISSING_TEXT

    def __str__(self) -> str:
        return MISSING_TEXT

    __repr__ = __str__


def _field(name: str, value: Any) -> Any:
    return _Missing(name, value) if is_missing(value) else value


def format_prompt(template: str | None, row: Any, name: str | None = None) -> str:
    """The item's prompt: ``template.format(...)`` over a row's fields, or ``{}``/``{input}`` for a scalar.

    Missing values (None, NaN, NaT, ``pd.NA``, a missing category) become :data:`MISSING_TEXT` (an empty
    field), never ``nan``/``NaT``/``<NA>``/``None``. A field the row lacks is a template error (``KeyError``);
    a value its format spec cannot apply to (``{date:%Y-%m-%d}`` over NaT, ``{n:d}`` over a string) raises
    :class:`PromptFormatError`, which a map turns into that item's error.
    """
    if isinstance(row, dict):
        if template is None:
            raise ValueError("dict / DataFrame rows need a prompt template, e.g. 'Classify: {text}'")
        fields = {str(k): _field(str(k), v) for k, v in row.items()}
        try:
            return template.format(**fields)
        except KeyError as exc:
            raise KeyError(f"prompt field {exc.args[0]!r} is not a field of the row (fields: "
                           f"{', '.join(map(str, row))})") from None
        except PromptFormatError:
            raise
        except (ValueError, TypeError, AttributeError) as exc:
            raise PromptFormatError(f"cannot format the prompt from this row: {exc}") from None
    text = MISSING_TEXT if is_missing(row) else row if isinstance(row, str) else str(row)
    if template is None:
        return text
    value = _field(name or "input", row)
    fields = {"input": value, **({name: value} if name else {})}
    try:
        return template.format(value, **fields)
    except (KeyError, IndexError, PromptFormatError):
        raise
    except (ValueError, TypeError, AttributeError) as exc:
        raise PromptFormatError(f"cannot format the prompt from {_clip_repr(row)}: {exc}") from None


def _clip_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _prompts(template: str | None, rows: list[Any], name: str | None) -> tuple[list[str], dict[int, MapItemError]]:
    """Every item's prompt, and the items whose prompt cannot be built (their error; their prompt is "")."""
    prompts: list[str] = []
    failures: dict[int, MapItemError] = {}
    for index, row in enumerate(rows):
        try:
            prompts.append(format_prompt(template, row, name))
        except PromptFormatError as exc:
            prompts.append("")
            failures[index] = MapItemError(f"item {index}: {exc}", "prompt_format")
    return prompts, failures


# ---------------------------------------------------------------------------------------------- keys
def settings_fingerprint(settings: RunSettings) -> str:
    """Everything in a run's settings that determines its answer, as canonical JSON."""
    model = settings.model
    output = getattr(settings, "output", None)
    spec = {
        "model": getattr(model, "request_model", None) or model.name,
        "system": settings.system,
        "mode": settings.mode.value,
        "tools": sorted((json.dumps(t.schema(), sort_keys=True, default=str) for t in settings.tools.values())
                        if settings.uses_tools else []),
        "toolsets": sorted(str(getattr(t, "name", t)) for t in settings.toolsets) if settings.uses_tools else [],
        "model_settings": dict(settings.model_settings),
        "output": getattr(output, "schema", None) if output is not None else None,
    }
    return json.dumps(spec, sort_keys=True, default=str)


def item_key(fingerprint: str, prompt: str) -> str:
    return hashlib.sha256(f"{fingerprint}\n{prompt}".encode()).hexdigest()


# ---------------------------------------------------------------------------------------------- the map
def _map_settings(agent: ChatAgent, options: Mapping[str, Any]) -> RunSettings:
    # The run options, resolved as for every entry point; a map of workflow inputs is not a thing: chat them.
    settings = resolve_settings(agent, options, where="map_async()", chat_workflow=True)
    if settings.stream is None:
        settings = dataclasses.replace(settings, stream=False)  # nobody reads 10,000 streams: one response each
    return settings


def _output_value(settings: RunSettings, result: Any) -> tuple[Any, Any]:
    """(the item's output, its JSON form for the journal)."""
    output = getattr(settings, "output", None)
    if output is None:
        return result.final_output, result.final_output
    value = result.output
    return value, output.adapter.dump_python(value, mode="json")


def _restore(settings: RunSettings, data: Any) -> Any:
    output = getattr(settings, "output", None)
    return data if output is None else output.adapter.validate_python(data)


async def map_async(
    agent: ChatAgent,
    inputs: Any,
    prompt: str | None = None,
    *,
    journal: str | Path | Journal | None = None,
    max_concurrency: int | str | None = "auto",
    return_exceptions: bool = True,
    on_event: EventCallback | None = None,
    executor: Any = "local",
    **options: Any,
) -> MapResult:
    """See :meth:`ChatAgent.map_async`. ``executor``: "local" (default), "ray", or a :class:`MapExecutor`."""
    runner = local_or_given(executor)
    started = time.perf_counter()
    rows, labels, series_name = input_rows(inputs)
    prompts, unformatted = _prompts(prompt, rows, series_name)
    settings = _map_settings(agent, options)
    fingerprint = settings_fingerprint(settings)
    keys = [item_key(fingerprint, p) for p in prompts]
    first: dict[str, int] = {}
    copies: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        if index in unformatted:  # no prompt: nothing to request or to look up
            continue
        first.setdefault(key, index)
        copies.setdefault(key, []).append(index)

    own_journal = journal is not None and not isinstance(journal, Journal)
    # Opening and reading the file happen off the loop (another process may hold it for seconds).
    store: Journal | None = await asyncio.to_thread(Journal, journal) if own_journal else journal  # type: ignore[arg-type]
    warned: list[str] = []

    def warn_journal(reason: str) -> None:
        if store is None or warned:
            return  # once per map
        warned.append(reason)
        warnings.warn(JournalUnavailableWarning(
            f"the journal {store.path} {reason}; every answer stays in this map's result, and the journal's "
            f"writer keeps trying to write them ({store.last_error or 'busy'})"), stacklevel=3)
    emit = agent.emitter(on_event)
    batch_id = uuid.uuid4().hex[:12]
    n = len(prompts)
    outputs: list[Any] = [None] * n
    errors: dict[int, BaseException] = {}
    cached = [False] * n
    done = [False] * n
    usage = RunUsage()
    try:
        emit(BatchStarted(batch_id, messages=tuple(prompts), mode="map"))
        for index, unformatted_error in unformatted.items():
            outputs[index] = errors[index] = unformatted_error
            done[index] = True
            emit(BatchItemFinished(batch_id, index=index, status="error", duration=0.0, result=None,
                                   error=str(unformatted_error)))
            if not return_exceptions:
                raise unformatted_error
        restored = await asyncio.to_thread(store.answered, first) if store is not None else {}
        if store is not None and store.last_error is not None:
            warn_journal("cannot be read now, so every item is requested")
        for key, (data, _paid) in restored.items():
            value = _restore(settings, data)
            for index in copies[key]:
                outputs[index], cached[index], done[index] = value, True, True
        pending = [key for key in first if key not in restored]
        deduplicated = n - len(unformatted) - len(first)
        restored_count = sum(len(copies[k]) for k in restored)
        if restored_count or deduplicated:
            emit(MapItemsRestored(batch_id, count=restored_count, deduplicated=deduplicated))

        def fill(key: str, value: Any, error: BaseException | None, status: str, text: str | None,
                 message: str | None) -> None:
            for index in copies[key]:
                done[index] = True
                if error is None:
                    outputs[index] = value
                else:
                    outputs[index] = errors[index] = error
                if index != first[key]:  # the copies finish with the item they repeat
                    emit(BatchItemFinished(batch_id, index=index, status=status, duration=0.0, result=text,
                                           error=message))

        def item_started(item: MapItem) -> None:
            emit(BatchItemStarted(batch_id, index=item.index, message=item.prompt,
                                  item_run_id=f"{batch_id}-{item.index}"))

        def item_finished(item: MapItem, outcome: ItemOutcome) -> None:
            key, index = item.key, item.index
            if done[index]:
                return  # reported twice (an executor re-ran it): the first report stands
            if outcome.status == "cancelled":
                emit(BatchItemFinished(batch_id, index=index, status="cancelled", duration=outcome.duration,
                                       result=None, error="cancelled"))
                return
            item_usage = outcome.usage
            usage.extend(item_usage)
            if outcome.status == "ok":
                value = outcome.value if outcome.has_value else _restore(settings, outcome.data)
                if store is not None:
                    store.record(key, index, item.prompt, outcome.data, usage=item_usage)  # queued: no I/O here
                    if store.last_error is not None:
                        warn_journal("cannot be written now")
                emit(BatchItemFinished(batch_id, index=index, status="ok", duration=outcome.duration,
                                       result=outcome.text, error=None))
                fill(key, value, None, "ok", outcome.text, None)
                return
            message = outcome.error or outcome.stop_reason
            error: BaseException = outcome.exception if outcome.exception is not None else MapItemError(
                f"item {index}: {message}", outcome.stop_reason)
            if store is not None:
                store.record(key, index, item.prompt, error=message, usage=item_usage)
            emit(BatchItemFinished(batch_id, index=index, status="error", duration=outcome.duration, result=None,
                                   error=message))
            fill(key, None, error, "error", None, message)
            if not return_exceptions:
                raise error

        items = [MapItem(key, first[key], prompts[first[key]]) for key in pending]
        await runner.run(MapJob(agent, settings, items, batch_id=batch_id, max_concurrency=max_concurrency,
                                on_event=on_event, started=item_started, finished=item_finished))
    finally:
        for index in range(n):
            if not done[index]:
                outputs[index] = errors[index] = asyncio.CancelledError()
        failed = len(errors)
        emit(BatchFinished(batch_id, ok=n - failed, failed=failed, duration=time.perf_counter() - started))
        if store is not None:
            # Bounded: a journal locked for longer must not hold the answers (or the cell) hostage.
            written = await asyncio.to_thread(store.close if own_journal else store.flush, JOURNAL_FLUSH_TIMEOUT)
            if own_journal:
                written = store.pending == 0
            if not written:
                warn_journal(f"is still locked or busy with {store.pending} rows not written yet")
    return MapResult(prompts, outputs, errors, usage, cached=cached, labels=labels, requested=len(pending),
                     restored=restored_count, deduplicated=deduplicated, duration=time.perf_counter() - started)


async def run_admitted(agent: ChatAgent, keys: Sequence[Any], one: Callable[[Any], Any],
                        max_concurrency: int | str | None) -> None:
    """Start ``one(key)`` for each key (any item) in order, never more at once than the pace allows.

    A fixed ``max_concurrency`` is the bound; with ``"auto"`` the bound follows the agent's limiter (twice
    its window, so items between two model requests, e.g. running tools, keep the window busy). The
    first exception (``return_exceptions=False``) or a cancellation stops and cancels everything.
    """
    if isinstance(max_concurrency, bool) or (max_concurrency is not None and max_concurrency != "auto"
                                             and not (isinstance(max_concurrency, int) and max_concurrency >= 1)):
        raise ValueError('max_concurrency must be "auto", None or at least 1')
    limiter = agent.limiter()

    def capacity() -> int:
        if isinstance(max_concurrency, int):
            return max_concurrency
        window = getattr(limiter, "limit", None)
        if window is None:  # a fixed agent-wide semaphore
            window = agent.max_concurrency if isinstance(agent.max_concurrency, int) else 8
        return max(2 * window, window + 8)

    room = asyncio.Event()
    running: set[asyncio.Task[Any]] = set()
    failure: list[BaseException] = []

    def finished(task: asyncio.Task[Any]) -> None:
        running.discard(task)
        if not task.cancelled() and task.exception() is not None and not failure:
            failure.append(task.exception())  # type: ignore[arg-type]
        room.set()

    try:
        for key in keys:
            while len(running) >= capacity() and not failure:
                room.clear()
                await room.wait()
            if failure:
                break
            task = asyncio.ensure_future(one(key))
            running.add(task)
            task.add_done_callback(finished)
            # Let the new item take its first step (building and sending its request) before the next one
            # starts: 1,000 items started in one loop iteration would hold the loop for all their first steps
            # (seconds on a busy machine), and the panel, a Stop click or other cells' tasks with it.
            await asyncio.sleep(0)
        while running and not failure:
            room.clear()
            await room.wait()
        if failure:
            raise failure[0]
    finally:
        for task in list(running):
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
