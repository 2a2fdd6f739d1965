"""Per-run settings: the agent's defaults plus one run's overrides, as one immutable value.

The run loop reads only this object and its own state; nothing a run is given is written back to the
agent (pydantic-ai's per-run ``model_settings`` and openai-agents' ``RunConfig`` are the models).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any

from ..models import Model
from ..tools.base import Tool


class ChatMode(str, Enum):
    """NORMAL: plain chat, no tools sent. AUTO: the tool loop. WORKFLOW: run the workflow steps."""

    NORMAL = "normal"
    AUTO = "auto"
    WORKFLOW = "workflow"


def _env_number(name: str, kind: type[float] | type[int]) -> Any:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
    if value < 0:
        raise ValueError(f"{name} must not be negative")
    return value


def env_request_timeout() -> float | None:
    """``MENGLONG_REQUEST_TIMEOUT`` (seconds per model request), if set."""
    return _env_number("MENGLONG_REQUEST_TIMEOUT", float)


def env_max_retries() -> int | None:
    """``MENGLONG_MAX_RETRIES`` (retries of a transient model error), if set."""
    return _env_number("MENGLONG_MAX_RETRIES", int)


@dataclass(frozen=True)
class RunSettings:
    """Everything that may differ per run. Built by :meth:`ChatAgent.settings`; never mutated."""

    model: Model
    system: str | None
    mode: ChatMode
    tools: Mapping[str, Tool]
    max_iterations: int
    timeout: float | None = None
    model_settings: Mapping[str, Any] = field(default_factory=dict)
    stream: bool | None = None
    request_timeout: float | None = None
    max_retries: int | None = None
    #: Decides tool calls that need approval (None: they are denied, nobody can be asked).
    approve: Any = None
    #: Every tool call of the run needs approval, not only ``@tool(requires_approval=True)`` ones.
    approve_all: bool = False
    #: Seconds to wait for a decision before denying (None: wait as long as it takes).
    approval_timeout: float | None = None
    #: Tool sources resolved when the run starts (MCP servers), added to ``tools``.
    toolsets: tuple[Any, ...] = ()
    #: The typed answer asked for (an ``OutputSpec`` built from ``output_type``), and how often to re-ask.
    output: Any = None
    output_retries: int = 2
    #: Caps on requests, tool calls and tokens (``UsageLimits``).
    usage_limits: Any = None

    def __post_init__(self) -> None:
        # Read-only views: a tool or callback that pokes at them cannot change another run.
        object.__setattr__(self, "tools", MappingProxyType(dict(self.tools)))
        object.__setattr__(self, "model_settings", MappingProxyType(dict(self.model_settings)))
        if self.max_iterations < 1:
            raise ValueError("max_iterations must be at least 1")

    def needs_approval(self, tool: Tool | None) -> bool:
        return self.approve_all or (tool is not None and tool.requires_approval)

    @property
    def uses_tools(self) -> bool:
        return self.mode is ChatMode.AUTO

    def system_messages(self) -> list[dict[str, Any]]:
        return [{"role": "system", "content": self.system}] if self.system else []
