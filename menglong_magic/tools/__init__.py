"""Tools an agent can call: ``@tool`` functions (pydantic-checked arguments) and toolsets such as MCP servers."""

from .base import (
    RunContext,
    Tool,
    ToolOutcome,
    Toolset,
    as_tool,
    collect_tools,
    execute_tool_call,
    flatten_tools,
    is_tool,
    serialize_result,
    tool,
)

__all__ = [
    "RunContext",
    "Tool",
    "ToolOutcome",
    "Toolset",
    "as_tool",
    "collect_tools",
    "execute_tool_call",
    "flatten_tools",
    "is_tool",
    "serialize_result",
    "tool",
]
