"""Tools: ``@tool``, JSON schemas from type hints and docstrings (pydantic), validated execution."""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import time
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, overload

import docstring_parser
import pydantic
import pydantic_core

TOOL_ATTRIBUTE = "__menglong_tool__"


@dataclass
class RunContext:
    """What a tool may know about the run calling it. Declare a parameter annotated ``RunContext`` to get it.

    The parameter is injected, never part of the tool's JSON schema. ``cancelled`` is set when the run is
    cancelled or times out: a sync tool (running in a worker thread, which Python cannot interrupt) should
    poll it (``if ctx.cancelled.is_set(): return``, or ``ctx.cancelled.wait(0.1)`` instead of ``sleep``).
    ``progress(done, total=None, note="")`` shows live progress on the tool call's card; it is thread-safe.
    """

    run_id: str
    agent: Any
    tool_name: str = ""
    call_id: str = ""
    iteration: int = 0
    cancelled: threading.Event = field(default_factory=threading.Event)
    _emit: Callable[[Any], None] | None = field(default=None, repr=False)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)
    #: Images attached per call id (mime, bytes, description), for models that accept images (set by the run).
    _attachments: dict[str, list[tuple[str, bytes, str]]] | None = field(default=None, repr=False)

    def progress(self, done: float, total: float | None = None, note: str = "") -> None:
        """Report progress (e.g. ``ctx.progress(3, 10, "pages")``); safe from sync tools' threads."""
        from ..events import ToolProgress

        if self._emit is None:
            return
        self._send(ToolProgress(self.run_id, iteration=self.iteration, call_id=self.call_id, name=self.tool_name,
                                done=done, total=total, note=note))

    def attach(self, mime: str, data: bytes, description: str = "") -> None:
        """Show a rich output (``"image/png"`` bytes, e.g. a figure) on the tool call's card; safe from threads.

        It is not sent to the model: say in the tool's text result what was attached.
        """
        import base64

        from ..events import ToolAttachment

        if self._attachments is not None and mime.startswith("image/"):
            self._attachments.setdefault(self.call_id, []).append((mime, data, description))
        self._send(ToolAttachment(self.run_id, iteration=self.iteration, call_id=self.call_id, name=self.tool_name,
                                  mime=mime, data=base64.b64encode(data).decode(), description=description))

    def _send(self, event: Any) -> None:
        if self._emit is None:
            return
        loop = self._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is not None and running is not loop:
            try:
                loop.call_soon_threadsafe(self._emit, event)
            except RuntimeError:  # the loop closed meanwhile: nobody is listening any more
                pass
            return
        self._emit(event)

    def for_call(self, tool_name: str, call_id: str, iteration: int) -> RunContext:
        """A copy naming one tool call; shares the run's ``cancelled`` event."""
        return RunContext(self.run_id, self.agent, tool_name, call_id, iteration, self.cancelled, self._emit,
                          self._loop, self._attachments)


@dataclass
class ToolOutcome:
    """What one tool call produced: the text sent back to the model, and whether it succeeded."""

    ok: bool
    content: str
    error: str | None
    duration: float
    arguments: Any


class Tool:
    """A callable the model may call, with its JSON schema and a pydantic model for its arguments."""

    def __init__(self, function: Callable[..., Any], name: str | None = None, description: str | None = None,
                 *, requires_approval: bool = False):
        self.function = function
        #: A person (or the run's ``approve`` callback) must say yes before each call runs.
        self.requires_approval = requires_approval
        self.name = name or function.__name__
        doc = docstring_parser.parse(inspect.getdoc(function) or "")
        summary = "\n\n".join(p for p in (doc.short_description, doc.long_description) if p)
        self.description = description if description is not None else summary
        self.is_async = inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
            getattr(function, "__call__", None)  # noqa: B004 - async callable objects
        )
        self.context_parameter = _context_parameter(function)
        self.arguments_model, self._names, self._positional = _arguments_model(
            function, self.name, doc, skip=self.context_parameter)
        self.parameters = _clean_schema(self.arguments_model.model_json_schema(by_alias=True))

    def renamed(self, name: str, description: str | None = None) -> Tool:
        """The same tool under another name (subclasses without a Python function override this)."""
        return Tool(self.function, name=name, description=description if description is not None else self.description,
                    requires_approval=self.requires_approval)

    def schema(self) -> dict[str, Any]:
        """The OpenAI ``tools=[...]`` entry for this tool."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    def validate(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Validate and coerce arguments; raises ``pydantic.ValidationError``. Keys are the parameters' own names."""
        model = self.arguments_model.model_validate(arguments)
        # Read back by the fields' internal names (p0, p1, …): never a BaseModel member such as model_extra.
        return {name: getattr(model, field_name) for field_name, name in self._names.items()}

    async def call(self, arguments: dict[str, Any], context: RunContext | None = None) -> Any:
        """Validate, then run: async tools are awaited, sync tools run in a worker thread."""
        kwargs = self.validate(arguments)
        if self.context_parameter is not None:
            kwargs[self.context_parameter] = context
        args = [kwargs.pop(name) for name in self._positional]  # positional-only parameters (``def f(a, /)``)
        if self.is_async:
            return await self.function(*args, **kwargs)
        # to_thread keeps the event loop (and the live panel) responsive while a sync tool works.
        return await asyncio.to_thread(self.function, *args, **kwargs)

    def __repr__(self) -> str:
        kind = "async " if self.is_async else ""
        return f"<{kind}tool {self.name}>"


@overload
def tool(function: Callable[..., Any], /) -> Callable[..., Any]: ...
@overload
def tool(
    *, name: str | None = None, description: str | None = None, requires_approval: bool = False
) -> Callable[[Callable[..., Any]], Callable[..., Any]]: ...


def tool(
    function: Callable[..., Any] | None = None, /, *, name: str | None = None, description: str | None = None,
    requires_approval: bool = False,
) -> Any:
    """Mark a function (sync or async) as a tool. The function itself is returned unchanged.

    Use bare (``@tool``) or with options (``@tool(name="lookup", description="...")``).
    ``requires_approval=True``: each call waits for a yes (the run's ``approve`` callback, the panel's
    buttons, or a prompt) and is never executed when denied.
    """

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        setattr(fn, TOOL_ATTRIBUTE, Tool(fn, name=name, description=description, requires_approval=requires_approval))
        return fn

    return mark(function) if function is not None else mark


def as_tool(obj: Any, name: str | None = None, description: str | None = None) -> Tool:
    """A :class:`Tool` for a Tool, a ``@tool`` function, or a plain function."""
    if isinstance(obj, Tool):
        if name is None and description is None:
            return obj
        return obj.renamed(name or obj.name, description or obj.description)
    marked = getattr(obj, TOOL_ATTRIBUTE, None)
    if isinstance(marked, Tool) and name is None and description is None:
        return marked
    if not callable(obj):
        raise TypeError(f"not a tool or function: {obj!r}")
    if isinstance(marked, Tool):
        return Tool(obj, name=name or marked.name, description=description or marked.description,
                    requires_approval=marked.requires_approval)
    return Tool(obj, name=name, description=description)


@typing.runtime_checkable
class Toolset(typing.Protocol):
    """A source of tools known only at run time (an MCP server): opened lazily on the running loop.

    ``list_tools()`` returns the current tools (cached by the toolset); ``aclose()`` releases it.
    """

    name: str

    async def list_tools(self) -> list[Tool]: ...

    async def aclose(self) -> None: ...


def is_tool(obj: Any) -> bool:
    """True for functions decorated with ``@tool``."""
    return isinstance(getattr(obj, TOOL_ATTRIBUTE, None), Tool)


def flatten_tools(items: Iterable[Any] | Any) -> list[Any]:
    """Functions, ``@tool`` functions and Tools, in any nesting of lists/tuples (as the seed's examples pass them)."""
    if isinstance(items, (list, tuple, set, frozenset)):
        return [leaf for item in items for leaf in flatten_tools(item)]
    if isinstance(items, dict):  # {name: tool}
        return flatten_tools(list(items.values()))
    return [items]


def collect_tools(items: Iterable[Any] | None) -> dict[str, Tool]:
    tools: dict[str, Tool] = {}
    for item in flatten_tools(list(items) if items is not None and not callable(items) else items or []):
        t = as_tool(item)
        tools[t.name] = t
    return tools


def serialize_result(value: Any) -> str:
    """Tool results go to the model as text: str as is, everything else as JSON (once)."""
    if isinstance(value, str):
        return value
    return pydantic_core.to_json(value, fallback=repr).decode()


async def execute_tool_call(
    tools: dict[str, Tool], name: str, raw_arguments: str | None, context: RunContext | None = None
) -> ToolOutcome:
    """Run one tool call. Every failure becomes an error text for the model, never an exception.

    Cancellation (``CancelledError``) is the one thing that propagates.
    """
    start = time.perf_counter()
    arguments: Any = raw_arguments

    def failed(message: str) -> ToolOutcome:
        return ToolOutcome(False, f"Error: {message}", message, time.perf_counter() - start, arguments)

    try:
        parsed = json.loads(raw_arguments) if raw_arguments and raw_arguments.strip() else {}
    except json.JSONDecodeError as exc:
        return failed(f"the arguments for tool {name!r} are not valid JSON ({exc.msg}); got {raw_arguments!r}")
    if not isinstance(parsed, dict):
        return failed(f"the arguments for tool {name!r} must be a JSON object; got {raw_arguments!r}")
    arguments = parsed
    tool_ = tools.get(name)
    if tool_ is None:
        available = ", ".join(sorted(tools)) or "none"
        return failed(f"unknown tool {name!r}; available tools: {available}")
    try:
        value = await tool_.call(parsed, context)
    except pydantic.ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in exc.errors()
        )
        return failed(f"invalid arguments for tool {name!r}: {details}")
    except Exception as exc:
        return failed(f"tool {name!r} raised {type(exc).__name__}: {exc}")
    return ToolOutcome(True, serialize_result(value), None, time.perf_counter() - start, arguments)


def _target(function: Callable[..., Any]) -> Callable[..., Any]:
    return function if inspect.isfunction(function) or inspect.ismethod(function) else function.__call__


def _hints(target: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(target, include_extras=True)
    except Exception:  # unresolved forward references: fall back to raw annotations
        return {}


def _context_parameter(function: Callable[..., Any]) -> str | None:
    """The name of the parameter annotated ``RunContext``, if any (injected, not in the schema)."""
    target = _target(function)
    hints = _hints(target)
    for pname, param in inspect.signature(target).parameters.items():
        annotation = hints.get(pname, param.annotation)
        if annotation is RunContext or annotation in ("RunContext", "menglong_magic.RunContext"):
            return pname
        if RunContext in typing.get_args(annotation):  # Optional[RunContext], RunContext | None
            return pname
    return None


def _arguments_model(
    function: Callable[..., Any], name: str, doc: docstring_parser.Docstring, skip: str | None = None
) -> tuple[type[pydantic.BaseModel], dict[str, str], list[str]]:
    """The pydantic model validating a call's arguments, its internal field names → the parameters' names, and
    the positional-only parameters (in order), which must be passed positionally.

    Fields get neutral internal names (``p0``, ``p1``, …) and the parameter's own name as their alias, so any
    name a Python function can have (``model_config``, ``model_extra``, ``schema``, ``json``, ``_private``,
    ``größe``) is a plain property of the schema and reaches the function unchanged, instead of colliding
    with BaseModel's members or pydantic's private-attribute rule.
    """
    target = _target(function)
    signature = inspect.signature(target)
    hints = _hints(target)
    descriptions = {p.arg_name: p.description for p in doc.params if p.description}
    fields: dict[str, Any] = {}
    names: dict[str, str] = {}
    positional: list[str] = []
    for pname, param in signature.parameters.items():
        if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        if pname in ("self", "cls") and param.annotation is inspect.Parameter.empty:
            continue
        if pname == skip:
            continue
        annotation = hints.get(pname, param.annotation)
        if annotation is inspect.Parameter.empty:
            annotation = Any
        default = ... if param.default is inspect.Parameter.empty else param.default
        field_name = f"p{len(fields)}"
        fields[field_name] = (annotation, pydantic.Field(default, alias=pname, description=descriptions.get(pname)))
        names[field_name] = pname
        if param.kind is inspect.Parameter.POSITIONAL_ONLY:
            positional.append(pname)
    model_name = "".join(part.capitalize() for part in name.split("_")) + "Arguments"
    # Validation accepts the aliases (the real names) only (pydantic's default): "p0" is an unknown argument.
    model = pydantic.create_model(model_name, __config__=pydantic.ConfigDict(extra="forbid"), **fields)
    return model, names, positional


def _clean_schema(schema: Any) -> Any:
    """Drop pydantic's auto-generated titles: noise for the model, tokens for the user."""
    if isinstance(schema, dict):
        return {k: _clean_schema(v) for k, v in schema.items() if not (k == "title" and isinstance(v, str))}
    if isinstance(schema, list):
        return [_clean_schema(v) for v in schema]
    return schema

