"""menglong_magic: async LLM agents for Python and Jupyter.

``from menglong_magic import ChatAgent, ChatMode, tool``; in IPython, ``%load_ext menglong_magic``.
"""

from __future__ import annotations

from typing import Any

from . import events
from .agent import (
    ApprovalDecision,
    ApprovalRequest,
    ChatAgent,
    ChatMode,
    IterationLog,
    RunningLoopError,
    RunResult,
    RunSettings,
    RunUsage,
    ToolCallRecord,
    Usage,
)
from .models import AzureOpenAIModel, Model, ModelError, OfflineModel, OpenAIModel, ScriptedModel
from .tools import RunContext, Tool, tool
from .usage import UsageLimits

__version__ = "0.1.0"


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext menglong_magic``: register the magics (idempotent)."""
    from .ipython.extension import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext menglong_magic``: remove everything the extension added."""
    from .ipython.extension import unload_ipython_extension as unload

    unload(ipython)


__all__ = [
    "ApprovalDecision",
    "ApprovalRequest",
    "AzureOpenAIModel",
    "ChatAgent",
    "ChatMode",
    "IterationLog",
    "Model",
    "ModelError",
    "OfflineModel",
    "OpenAIModel",
    "RunContext",
    "RunResult",
    "RunSettings",
    "RunUsage",
    "RunningLoopError",
    "ScriptedModel",
    "Tool",
    "ToolCallRecord",
    "Usage",
    "UsageLimits",
    "events",
    "load_ipython_extension",
    "tool",
    "unload_ipython_extension",
]
