"""The one declaration of what a run may set, and the one function that turns it into :class:`RunSettings`.

Every entry point (``arun``, ``chat_async``, ``chat_result_async``, batches, sequential chats, maps, their
sync twins, workflow prompt steps, the Ray executor's spec, the magics) takes exactly the keys of
:class:`RunOptions` as ``**options: Unpack[RunOptions]`` (as openai-agents' ``RunConfig`` is one object for
every runner) and resolves them with :func:`resolve_settings`. An option left out (or None) is the agent's
default. Model parameters (temperature, ...) go through ``model_settings=`` only: an unknown keyword is a
TypeError here, never something passed on to the model SDK.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypedDict

from ..models import Model, resolve_model
from ..tools.base import Tool, Toolset, as_tool, collect_tools
from ..usage import UsageLimits
from .approval import Approver
from .output import OutputSpec
from .settings import ChatMode, RunSettings, env_max_retries, env_request_timeout

if TYPE_CHECKING:
    from .chat_agent import ChatAgent


class RunOptions(TypedDict, total=False):
    """What one run may set on top of its agent's defaults (None or absent: the agent's default)."""

    #: A Model, a model name, ``"local"``, ``"offline"`` or ``"replay:PATH"``.
    model: Model | str | None
    #: The system prompt of this run (``""``: none).
    system: str | None
    #: Tools of this run instead of the agent's (functions, ``@tool``s, Tools, or a name → tool mapping).
    tools: Iterable[Any] | Mapping[str, Any] | None
    #: Toolsets added to the agent's own for this run (e.g. the notebook's ``KernelTools``).
    toolsets: Iterable[Toolset] | None
    #: ``"normal"`` (no tools), ``"auto"`` (the tool loop) or ``"workflow"``.
    mode: ChatMode | str | None
    #: Model calls at most (one iteration is one model call).
    max_iterations: int | None
    #: Seconds for the whole run; the run then stops with stop_reason "timeout".
    timeout: float | None
    #: Seconds per model request.
    request_timeout: float | None
    #: Retries of a transient model error (429, 5xx, connection, timeout).
    max_retries: int | None
    #: Decides tool calls that need approval; without one they are denied.
    approve: Approver | None
    #: Every tool call of this run needs approval, not only ``@tool(requires_approval=True)`` ones.
    approve_all: bool | None
    #: Seconds to wait for an approval decision before denying.
    approval_timeout: float | None
    #: Answer as a validated instance of this type (``result.output``).
    output_type: Any
    #: Caps on requests, tool calls and tokens.
    usage_limits: UsageLimits | None
    #: Model parameters (temperature, max_tokens, ...), merged over the agent's.
    model_settings: Mapping[str, Any] | None


#: The option names, in declaration order.
RUN_OPTIONS: tuple[str, ...] = tuple(RunOptions.__annotations__)


def check_options(options: Mapping[str, Any], where: str = "a run") -> None:
    """TypeError for any keyword that is not a run option, naming the valid ones."""
    unknown = [k for k in options if k not in RunOptions.__annotations__]
    if unknown:
        raise TypeError(f"{where} got unexpected keyword argument(s) {', '.join(map(repr, unknown))} (model "
                        f"parameters such as temperature go in model_settings={{...}}); "
                        f"the run options are: {', '.join(RUN_OPTIONS)}")


def merge_options(options: Mapping[str, Any], **positional: Any) -> dict[str, Any]:
    """``options`` plus options given positionally by an older signature (``arun(task, 3, 10.0)``)."""
    merged = dict(options)
    for key, value in positional.items():
        if value is not None:
            if merged.get(key) is not None:
                raise TypeError(f"{key} given twice")
            merged[key] = value
    return merged


def _tools(agent: ChatAgent, tools: Any) -> dict[str, Tool]:
    if tools is None:
        return dict(agent.tools)
    if isinstance(tools, Mapping):
        return {t.name: t for t in (as_tool(v) for v in tools.values())}
    return collect_tools(tools)


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def resolve_settings(agent: ChatAgent, options: Mapping[str, Any], *, where: str = "a run",
                     default_mode: ChatMode | str | None = None, chat_workflow: bool = False) -> RunSettings:
    """The agent's defaults with this run's ``options``: the only place defaults are settled.

    ``default_mode`` replaces the agent's mode when the run gives none (``arun`` runs tasks in AUTO).
    ``chat_workflow``: where a workflow cannot run (batches, maps), WORKFLOW mode chats instead (AUTO when
    there are tools, else NORMAL).
    """
    check_options(options, where)
    get = options.get
    mode = ChatMode(_first(get("mode"), default_mode, agent.mode))
    tools = _tools(agent, get("tools"))
    toolsets = (*agent.toolsets, *(get("toolsets") or ()))
    if chat_workflow and mode is ChatMode.WORKFLOW:
        mode = ChatMode.AUTO if tools or toolsets else ChatMode.NORMAL
    model = get("model")
    system = get("system")
    output_type = _first(get("output_type"), agent.output_type)
    return RunSettings(
        model=agent.model if model is None else resolve_model(model),
        system=agent.system if system is None else (system or None),
        mode=mode,
        tools=tools,
        max_iterations=_first(get("max_iterations"), agent.max_iterations),
        timeout=_first(get("timeout"), agent.timeout),
        model_settings={**agent.model_settings, **(get("model_settings") or {})},
        stream=agent.stream,
        request_timeout=_first(get("request_timeout"), agent.request_timeout, env_request_timeout()),
        max_retries=_first(get("max_retries"), agent.max_retries, env_max_retries()),
        approve=_first(get("approve"), agent.approve),
        approve_all=bool(get("approve_all")),
        approval_timeout=_first(get("approval_timeout"), agent.approval_timeout),
        toolsets=toolsets,
        output=None if output_type is None else OutputSpec.of(output_type),
        output_retries=agent.output_retries,
        usage_limits=_first(get("usage_limits"), agent.usage_limits),
    )
