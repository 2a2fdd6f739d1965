"""``agent.map_async(inputs, prompt)``: one isolated run per input, in parallel, with an optional journal.

A map is a batch with a journal. Each input (a string, a dict, a pandas DataFrame row or Series value)
is formatted into the prompt template and run as an isolated chat turn (no conversation history; the
agent's tools if it has any). Outputs come back in input order in a :class:`MapResult`. Missing values
(None, NaN, NaT, ``pd.NA``, a missing category) are empty fields in the prompt; a format spec over one
(``{date:%Y-%m-%d}`` on NaT) is that item's :class:`MapItemError`, not the map's (see :func:`format_prompt`).

The journal (``journal="runs.sqlite"``) is the source of truth: every item that finishes is committed
to SQLite at once, keyed by a hash of everything that determines its answer (the model, the system
prompt, the mode, the tools' schemas, the model settings, the output type and the item's prompt text).
Running the same map again after a crash, an interrupt or a kernel restart requests only the items not
in the journal yet; identical prompts within one call are requested once. Failed items are recorded
too (with their error) but requested again on the next run: nothing was paid for them.

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
import dataclasses
import decimal
import hashlib
import json
import sqlite3
import time
import typing
import uuid
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
class Journal:
    """A SQLite file (WAL) with one row per finished map item: key, index, prompt, output JSON, error,
    usage, created. One journal may serve many maps (keys are content hashes)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives the process being killed (not a power cut before checkpoint).
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute(JOURNAL_SCHEMA)

    def __repr__(self) -> str:
        return f"Journal({str(self.path)!r})"

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM items WHERE error IS NULL").fetchone()[0])

    def answered(self, keys: Iterable[str]) -> dict[str, tuple[Any, RunUsage]]:
        """The successful rows among ``keys``: key -> (output JSON value, usage)."""
        found: dict[str, tuple[Any, RunUsage]] = {}
        keys = list(keys)
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for key, output, usage in self._db.execute(
                    f"SELECT key, output, usage FROM items WHERE error IS NULL AND key IN ({marks})", chunk):
                found[key] = (json.loads(output), usage_from_json(usage))
        return found

    def record(self, key: str, index: int, prompt: str, output: Any = None, error: str | None = None,
               usage: RunUsage | None = None) -> None:
        """Commit one finished item (an answer replaces an earlier error; an error never replaces an answer)."""
        self._db.execute(
            "INSERT INTO items (key, idx, prompt, output, error, usage, created) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET idx=excluded.idx, output=excluded.output, error=excluded.error, "
            "usage=excluded.usage, created=excluded.created WHERE items.error IS NOT NULL",
            (key, index, prompt, None if error is not None else json.dumps(output), error,
             usage_to_json(usage), time.time()))

    def rows(self) -> list[dict[str, Any]]:
        """Every row, oldest first (for inspection)."""
        cursor = self._db.execute("SELECT key, idx, prompt, output, error, usage, created FROM items ORDER BY created")
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor]


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
    store = Journal(journal) if own_journal else journal  # type: ignore[arg-type]
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
        restored = store.answered(first) if store is not None else {}
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
                    store.record(key, index, item.prompt, outcome.data, usage=item_usage)
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
        if own_journal and store is not None:
            store.close()
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
