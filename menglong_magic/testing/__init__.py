"""Test helpers shipped with the package: a scripted OpenAI-compatible server for loopback HTTP."""

from .server import (
    ScriptedOpenAIServer,
    call_tools,
    disconnect,
    echo_responder,
    fault,
    free_port,
    reply,
    tool_call,
    tool_then_answer_responder,
)

__all__ = [
    "ScriptedOpenAIServer",
    "call_tools",
    "disconnect",
    "echo_responder",
    "fault",
    "free_port",
    "reply",
    "tool_call",
    "tool_then_answer_responder",
]
