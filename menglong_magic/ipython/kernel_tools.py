"""The notebook as the agent's workspace: a toolset that sees the live kernel's variables, runs code in the
user's namespace (with approval), reads the last error and proposes cells.

``KernelTools(shell)`` is a toolset (like an MCP server): ``%agent_run --kernel ...``, ``%%agent --kernel``,
``%config AgentMagics.kernel_tools = True``, or ``ChatAgent(toolsets=[KernelTools(get_ipython())])``.

Everything it returns is bounded in size and passes through :func:`menglong_magic.secrets.redact`; variables
named like credentials (and any value the secret registry knows) are shown as ``***`` and never sent.

The tools run on the kernel's main thread (they are ``async`` functions that do not await): user objects are
read and user code runs where a cell would run it, so matplotlib, signal handlers and thread-unsafe
libraries behave as in a cell. The cost: while ``run_code`` executes, the loop is busy, so the panel does not
update and Stop waits until the code finishes; Kernel → Interrupt stops the code (and the run) at once.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import contextlib
import functools
import inspect
import io
import itertools
import linecache
import re
import reprlib
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from typing import Any, Literal

from ..secrets import MASK, redact, register_secret
from ..tools.base import RunContext, Tool

RunCodePolicy = Literal["ask", "allow", "never"]

#: Words of a variable's name (split at ``_``, digits and camelCase) that mark a credential: its value is never
#: listed, inspected or sent. ``keys`` or ``tokens`` (plural: data) are not on the list; see :func:`secret_name`.
SECRET_WORDS = frozenset({"key", "apikey", "token", "password", "passwd", "pwd", "passphrase", "secret", "secrets",
                          "credential", "credentials", "auth", "cookie", "cookies", "private", "bearer"})
_SECRET_INSIDE = re.compile(r"(?i)password|passwd|secret|apikey|api_key|credential|accesstoken|authtoken")
_WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])")
LIST_LIMIT = 4000
INSPECT_LIMIT = 6000
RUN_OUTPUT_LIMIT = 6000
#: Rows above which inspect works on a sample (describe/null counts stay fast on 10M-row frames).
SAMPLE_ROWS = 100_000
#: Cells (rows × columns) up to which null counts are exact (above: estimated from the sample).
EXACT_NULL_CELLS = 40_000_000
MAX_FIGURES = 4
_codes = itertools.count(1)

class _Preview(reprlib.Repr):
    """reprlib without its sorting of dicts and sets (O(n log n) on a million keys): the first items in
    iteration order, and ``***`` for the value of any key named like a credential."""

    def _items(self, x: Any, limit: int, level: int, show: Any) -> str:
        if level <= 0:
            return "..."
        items = [show(item) for item in itertools.islice(x, limit)]
        if len(x) > limit:
            items.append(self.fillvalue)
        return ", ".join(items)

    def repr_dict(self, x: dict[Any, Any], level: int) -> str:
        def show(key: Any) -> str:
            value = MASK if isinstance(key, str) and secret_name(key) else self.repr1(x[key], level - 1)
            return f"{self.repr1(key, level - 1)}: {value}"

        return "{" + self._items(x, self.maxdict, level, show) + "}" if x else "{}"

    def repr_set(self, x: set[Any], level: int) -> str:
        return "{" + self._items(x, self.maxset, level, lambda v: self.repr1(v, level - 1)) + "}" if x else "set()"

    def repr_frozenset(self, x: frozenset[Any], level: int) -> str:
        return f"frozenset({self.repr_set(set(itertools.islice(x, self.maxset + 1)), level)})" if x else "frozenset()"


def _preview(width: int, items: int, levels: int) -> _Preview:
    r = _Preview()
    r.maxstring = r.maxother = width
    r.maxlist = r.maxdict = r.maxtuple = r.maxset = r.maxdeque = r.maxarray = items
    r.maxlevel = levels
    return r


_short = _preview(60, 6, 2)
_long = _preview(400, 20, 3)


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n… [{len(text) - limit} more characters cut]"


def secret_name(name: str) -> bool:
    """``api_key``, ``OPENAI_API_KEY``, ``dbPassword``, ``client_secret``, ``authToken``: named like a credential."""
    return bool(_SECRET_INSIDE.search(name)) or any(w.lower() in SECRET_WORDS for w in _WORDS.findall(name))


def _is_secret_value(value: Any) -> bool:
    """A (short enough) string the secret registry, or its key-shaped patterns, would hide."""
    if isinstance(value, bytes):
        value = value[:10_000].decode("utf-8", "replace")
    return isinstance(value, str) and len(value) <= 10_000 and redact(value) != value


def _pandas_kind(value: Any) -> str | None:
    pd = sys.modules.get("pandas")
    if pd is None:
        return None
    if isinstance(value, pd.DataFrame):
        return "DataFrame"
    if isinstance(value, pd.Series):
        return "Series"
    return None


def _is_ndarray(value: Any) -> bool:
    np = sys.modules.get("numpy")
    return np is not None and isinstance(value, np.ndarray)


class KernelTools:
    """A toolset over an IPython shell's namespace: list/inspect variables, run code, last error, propose a cell.

    ``run_code``: "ask" (each snippet waits for approval: the panel's card shows the code with Approve /
    Deny; denied at once where nobody can be asked), "allow" (runs without asking) or "never" (not offered).
    """

    name = "kernel"

    def __init__(self, shell: Any = None, *, run_code: RunCodePolicy = "ask") -> None:
        if shell is None:
            from IPython import get_ipython

            shell = get_ipython()
        if shell is None:
            raise RuntimeError("KernelTools needs an IPython shell (run it in a notebook or IPython)")
        if run_code not in ("ask", "allow", "never"):
            raise ValueError(f"run_code must be 'ask', 'allow' or 'never', not {run_code!r}")
        self.shell = shell
        self.run_code_policy: RunCodePolicy = run_code
        self._proposed_in: tuple[int, int] = (-1, 0)  # (execution count, proposals in that cell)
        self._tools: list[Tool] | None = None

    def __repr__(self) -> str:
        return f"KernelTools(run_code={self.run_code_policy!r})"

    # ------------------------------------------------------------------ toolset protocol
    async def list_tools(self) -> list[Tool]:
        if self._tools is None:
            tools = [
                Tool(self.list_variables, name="list_variables"),
                Tool(self.inspect_variable, name="inspect_variable"),
                Tool(self.last_error, name="last_error"),
                Tool(self.propose_cell, name="propose_cell"),
            ]
            if self.run_code_policy != "never":
                tools.insert(2, Tool(self.run_code, name="run_code", requires_approval=self.run_code_policy == "ask"))
            self._tools = tools
        return list(self._tools)

    async def aclose(self) -> None:
        """Nothing to release (the shell belongs to the user)."""

    # ------------------------------------------------------------------ the namespace
    def _hidden(self) -> set[str]:
        return set(getattr(self.shell, "user_ns_hidden", {}) or {})

    def _visible(self, name: str, value: Any, hidden: set[str]) -> bool:
        if name.startswith("_") or name in hidden:
            return False
        if inspect.ismodule(value) or inspect.isclass(value) or inspect.isroutine(value):
            return False
        if isinstance(value, functools.partial):
            return False
        module = type(value).__module__ or ""
        if module.startswith("menglong_magic.") and type(value).__name__ != "RunResult":
            return False  # the extension's own objects (agents, run handles, toolsets)
        return not module.startswith("IPython.")

    def _register_secrets(self) -> None:
        """String values of credential-named variables join the secret registry: redacted everywhere."""
        for name, value in list(self.shell.user_ns.items()):
            if isinstance(value, str) and secret_name(name):
                register_secret(value)

    def _masked(self, name: str, value: Any) -> bool:
        return secret_name(name) or _is_secret_value(value)

    async def list_variables(self) -> str:
        """List the user's variables in the notebook: name, type, shape or size, and a one-line preview.

        Modules, functions, classes and private names are left out. Use inspect_variable for details.
        """
        self._register_secrets()
        hidden = self._hidden()
        lines: list[str] = []
        size = 0
        shown = 0
        items = [(k, v) for k, v in list(self.shell.user_ns.items()) if self._visible(k, v, hidden)]
        for name, value in items:
            line = f"{name}: {MASK}" if self._masked(name, value) else redact(f"{name}: {summary(value)}")
            if size + len(line) + 1 > LIST_LIMIT:
                break
            lines.append(line)
            size += len(line) + 1
            shown += 1
        if not items:
            return "No user variables are defined in the notebook yet."
        if shown < len(items):
            lines.append(f"… {len(items) - shown} more variables not shown (answer limit {LIST_LIMIT} characters): "
                         + redact(", ".join(k for k, _ in items[shown:shown + 50]))[:500])
        return "\n".join(lines)

    async def inspect_variable(self, name: str) -> str:
        """Details of one variable: a DataFrame's shape, dtypes, null counts, head and describe(); an array's
        shape, dtype and statistics; a container's length and a sample; otherwise its repr (clipped).

        Args:
            name: the variable's name in the notebook
        """
        self._register_secrets()
        ns = self.shell.user_ns
        if name not in ns or name.startswith("_") or name in self._hidden():
            close = [k for k in ns if not k.startswith("_") and k.lower() == name.lower()]
            hint = f" (did you mean {close[0]!r}?)" if close else " (call list_variables to see what exists)"
            return f"Error: no variable named {name!r} in the notebook{hint}."
        value = ns[name]
        if self._masked(name, value):
            return f"{name}: {MASK} (hidden: it looks like a credential)"
        return _clip(redact(f"{name}: {describe(value)}"), INSPECT_LIMIT)

    # ------------------------------------------------------------------ running code
    async def run_code(self, code: str, ctx: RunContext | None = None) -> str:
        """Run Python code in the notebook's namespace (like a cell; the user approves it first). Returns the
        printed output, the value of the last expression, any figure drawn, or the error's traceback.
        Variables it assigns stay defined in the notebook.

        Args:
            code: Python source to execute (no top-level await)
        """
        self._register_secrets()
        filename = f"<agent-code-{next(_codes)}>"
        try:
            tree = ast.parse(code, filename, "exec")
        except SyntaxError as exc:
            return redact("Error: " + "".join(traceback.format_exception_only(SyntaxError, exc)).strip())
        last: ast.Expression | None = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)  # type: ignore[attr-defined]
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        ns = self.shell.user_ns
        out, err = io.StringIO(), io.StringIO()
        before = _figure_numbers()
        value: Any = None
        failure: str | None = None
        interrupted = False
        previous = signal.getsignal(signal.SIGINT)
        try:
            with _sigint_raises(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    exec(compile(tree, filename, "exec"), ns)  # the user's namespace, approved code
                    if last is not None:
                        value = eval(compile(last, filename, "eval"), ns)
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:  # SystemExit too: the kernel must survive the snippet
                    failure = _short_traceback(exc)
        except KeyboardInterrupt:
            interrupted = True
        figures = _new_figures(before)
        if interrupted:
            await _interrupt_cell(previous)
            return "Error: interrupted by the user (Kernel → Interrupt); the code was stopped."
        parts = []
        if out.getvalue():
            parts.append("stdout:\n" + _clip(out.getvalue(), RUN_OUTPUT_LIMIT // 2))
        if err.getvalue():
            parts.append("stderr:\n" + _clip(err.getvalue(), RUN_OUTPUT_LIMIT // 4))
        if failure is not None:
            parts.append(failure)
        elif value is not None:
            parts.append("value:\n" + _clip(_value_text(value), RUN_OUTPUT_LIMIT // 2))
        for number, (png, width, height) in enumerate(figures, 1):
            if ctx is not None:  # called by a run: the card shows it (and a model that accepts images gets it)
                ctx.attach("image/png", png, f"figure {number} ({width}×{height})")
            parts.append(f"[figure {number}: a {width}×{height} PNG, shown to the user]")
        if not parts:
            parts.append("(no output)")
        return _clip(redact("\n".join(parts)), RUN_OUTPUT_LIMIT)

    # ------------------------------------------------------------------ errors and cells
    async def last_error(self) -> str:
        """The exception and traceback of the most recent failing cell, and the sources of the last few cells."""
        self._register_secrets()
        exc = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
        parts = []
        if exc is None:
            parts.append("No cell has failed in this session.")
        else:
            parts.append("Last error:\n" + _short_traceback(exc, skip_first=False, limit=12))
        history = getattr(self.shell, "history_manager", None)
        raw = list(getattr(history, "input_hist_raw", None) or [])  # as typed (``In`` holds transformed code)
        # Index = execution count; the last entry is the cell running now.
        recent = [(number, source) for number, source in enumerate(raw[:-1]) if number and source.strip()][-3:]
        if recent:
            parts.append("Recent cells (oldest first):")
            for number, source in recent:
                parts.append(f"--- In [{number}] ---\n" + _clip(source, 1200))
        return _clip(redact("\n".join(parts)), INSPECT_LIMIT)

    async def propose_cell(self, code: str) -> str:
        """Put code into a new cell below the current one for the user to review and run. It is not executed.

        Args:
            code: the cell's source
        """
        count = getattr(self.shell, "execution_count", 0)
        seen, proposals = self._proposed_in
        proposals = proposals + 1 if seen == count else 1
        self._proposed_in = (count, proposals)
        self.shell.set_next_input(code, replace=False)
        where = ("a new cell below the current one" if getattr(self.shell, "kernel", None) is not None
                 else "the next input prompt")
        note = " (it replaces the cell proposed earlier in this run: one proposal per cell)" if proposals > 1 else ""
        return f"The code was put into {where}, not executed{note}."


# ---------------------------------------------------------------------- summaries (list) and details (inspect)
def _dtypes(frame: Any, limit: int = 12) -> str:
    items = [f"{col}:{dtype}" for col, dtype in itertools.islice(frame.dtypes.items(), limit)]
    more = frame.shape[1] - len(items)
    return ", ".join(items) + (f", … {more} more columns" if more > 0 else "")


def summary(value: Any) -> str:
    """One line: type, size or shape, a preview. Constant time for frames and arrays."""
    kind = _pandas_kind(value)
    if kind == "DataFrame":
        rows, cols = value.shape
        return f"DataFrame {rows}×{cols} [{_dtypes(value)}]"
    if kind == "Series":
        return f"Series len={len(value)} dtype={value.dtype} name={value.name!r}"
    if _is_ndarray(value):
        return f"ndarray shape={value.shape} dtype={value.dtype}"
    type_name = type(value).__name__
    if isinstance(value, (str, bytes)):
        return f"{type_name} len={len(value)} {_short.repr(value)}"
    if isinstance(value, (list, tuple, dict, set, frozenset)):
        return f"{type_name} len={len(value)} {_short.repr(value)}"
    return f"{type_name} {_short.repr(value)}"


def describe(value: Any) -> str:
    kind = _pandas_kind(value)
    if kind == "DataFrame":
        return _describe_frame(value)
    if kind == "Series":
        return _describe_frame(value.to_frame(), series=True)
    if _is_ndarray(value):
        return _describe_array(value)
    type_name = type(value).__name__
    if isinstance(value, (list, tuple, dict, set, frozenset)):
        return f"{type_name}, len={len(value)}\nsample: {_long.repr(value)}"
    if isinstance(value, (str, bytes)):
        return f"{type_name}, len={len(value)}\n{_long.repr(value)}"
    return f"{type_name}\n{_long.repr(value)}"


def _describe_frame(frame: Any, series: bool = False) -> str:
    import numpy as np

    rows, cols = frame.shape
    sample = frame
    note = ""
    if rows > SAMPLE_ROWS:
        # A random sample (with a fixed seed): describe() and null counts stay fast on huge frames.
        picks = np.sort(np.random.default_rng(0).integers(0, rows, SAMPLE_ROWS))
        sample = frame.iloc[picks]
        note = f" (estimated from a random sample of {SAMPLE_ROWS:,} of {rows:,} rows)"
    shown_cols = sample.iloc[:, :30] if cols > 30 else sample
    if rows * min(cols, 30) <= EXACT_NULL_CELLS:  # counting nulls is one vectorised pass: exact while cheap
        nulls, null_note = frame.iloc[:, :30].isna().sum(), ""
    else:
        nulls = (shown_cols.isna().sum() * (rows / SAMPLE_ROWS)).round().astype(int)
        null_note = note
    parts = [f"{'Series' if series else 'DataFrame'}, shape {rows}×{cols}" if not series else
             f"Series, length {rows}, dtype {frame.dtypes.iloc[0]}"]
    parts.append("dtypes: " + _dtypes(frame, 30))
    nonzero = {str(k): int(v) for k, v in nulls.items() if v}
    counts = ", ".join(f"{k}={v}" for k, v in nonzero.items()) if nonzero else "none"
    parts.append(f"null counts{null_note}: {counts}")
    with _pandas_display():
        parts.append("head():\n" + frame.head(5).iloc[:, :20].to_string(max_colwidth=40))
        try:
            numeric = shown_cols.select_dtypes("number")
            if numeric.shape[1]:
                parts.append(f"describe(){note}:\n" + numeric.describe().iloc[:, :12].to_string(max_colwidth=30))
            other = shown_cols.select_dtypes(exclude=["number", "datetime", "timedelta"]).iloc[:, :10]
            if other.shape[1]:  # text and categories: count, unique, top, freq
                parts.append(f"describe() of the other columns{note}:\n"
                             + other.describe().to_string(max_colwidth=30))
        except Exception as exc:  # odd dtypes: the rest of the answer still helps
            parts.append(f"describe() failed: {type(exc).__name__}: {exc}")
    return "\n".join(parts)


@contextlib.contextmanager
def _pandas_display() -> Iterator[None]:
    import pandas as pd

    with pd.option_context("display.width", 120, "display.max_columns", 20, "display.precision", 4):
        yield


def _describe_array(array: Any) -> str:
    import numpy as np

    parts = [f"ndarray, shape {array.shape}, dtype {array.dtype}, {array.size:,} elements"]
    if array.size and np.issubdtype(array.dtype, np.number) and not np.issubdtype(array.dtype, np.complexfloating):
        flat = array.reshape(-1)
        note = ""
        if flat.size > SAMPLE_ROWS * 10:
            flat = flat[np.random.default_rng(0).integers(0, flat.size, SAMPLE_ROWS)]
            note = f" (mean/std from a random sample of {SAMPLE_ROWS:,})"
        with np.errstate(all="ignore"):
            parts.append(f"min {np.nanmin(array):.6g}, max {np.nanmax(array):.6g}, mean {np.nanmean(flat):.6g}, "
                         f"std {np.nanstd(flat):.6g}{note}")
        if np.issubdtype(array.dtype, np.floating):
            parts.append(f"NaN: {int(np.isnan(flat).sum()):,}{' in the sample' if note else ''}")
    parts.append(np.array2string(array, threshold=40, edgeitems=3, max_line_width=100))
    return "\n".join(parts)


def _value_text(value: Any) -> str:
    kind = _pandas_kind(value)
    if kind is not None:
        with _pandas_display():
            if kind == "DataFrame":
                return f"DataFrame {value.shape[0]}×{value.shape[1]}\n" + value.to_string(max_rows=30, max_cols=12)
            return f"Series length {len(value)}\n" + value.to_string(max_rows=30)
    if _is_ndarray(value):
        import numpy as np

        return np.array2string(value, threshold=200, edgeitems=5, max_line_width=100)
    return _long.repr(value)


def _short_traceback(exc: BaseException, skip_first: bool = True, limit: int = 8) -> str:
    """The last ``limit`` frames (without our own exec frame) and the exception line."""
    tb = exc.__traceback__
    if skip_first and tb is not None:
        tb = tb.tb_next
    frames = traceback.extract_tb(tb)[-limit:]
    lines = ["Traceback (most recent call last):\n", *traceback.format_list(frames),
             *traceback.format_exception_only(type(exc), exc)]
    return _clip("".join(lines).rstrip(), 2500)


# ---------------------------------------------------------------------- figures
def _figure_numbers() -> dict[int, Any]:
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return {}
    return {n: plt.figure(n) for n in plt.get_fignums()}


def _new_figures(before: dict[int, Any]) -> list[tuple[bytes, int, int]]:
    """PNGs of the figures the code opened (or drew on), closed so the cell does not show them twice."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return []
    images = []
    for number in plt.get_fignums():
        figure = plt.figure(number)
        if number in before and before[number] is figure and not figure.stale:
            continue
        if len(images) < MAX_FIGURES:
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=80)  # no "tight" box: the size does not depend on fonts
            png = buffer.getvalue()
            width, height = _png_size(png)
            images.append((png, width, height))
        plt.close(figure)
    return images


def _png_size(png: bytes) -> tuple[int, int]:
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


# ---------------------------------------------------------------------- interrupts
@contextlib.contextmanager
def _sigint_raises() -> Iterator[None]:
    """While user code runs on the main thread, SIGINT raises KeyboardInterrupt in it (as in a plain cell).

    ipykernel's own handler for async cells only schedules a cancellation on the loop, which a blocking
    ``time.sleep(30)`` would never see (the sleep resumes after the handler returns).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


async def _interrupt_cell(previous: Any) -> None:
    """Hand the interrupt to whoever owned SIGINT before the code ran (ipykernel: cancel the cell; an
    ``asyncio.Runner``: cancel its main task), then wait for that cancellation to reach this run."""
    if callable(previous) and previous is not signal.default_int_handler:
        previous(signal.SIGINT, None)
        await asyncio.sleep(10)  # normally cancelled long before this
        return
    raise asyncio.CancelledError  # nobody else to tell: stop the run as Stop would
