"""Tool-call approval: who may say yes before a tool runs, and what a decision records.

An approver is a sync or async callable taking an :class:`ApprovalRequest` and returning ``True``
(approve), ``False`` (deny), a string (deny, with that reason) or an :class:`ApprovalDecision`.
Without one, a call that needs approval is denied at once: nobody can be asked (a script, nbclient).
The magics supply approvers that ask a person (the panel's buttons, a terminal prompt).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

DecidedBy = Literal["callback", "panel", "prompt", "timeout"]


@dataclass(frozen=True)
class ApprovalRequest:
    """A tool call waiting for a yes."""

    tool_name: str
    arguments: Any  # parsed dict, or the raw string when it was not valid JSON
    call_id: str
    run_id: str
    agent_name: str
    iteration: int


@dataclass(frozen=True)
class ApprovalDecision:
    """``approved``, or denied with ``reason``; ``by``: "callback" | "panel" | "prompt" | "timeout"."""

    approved: bool
    reason: str | None = None
    by: str = "callback"

    def describe(self) -> str:
        if self.approved:
            return f"approved ({self.by})"
        return f"denied ({self.by})" + (f": {self.reason}" if self.reason else "")


Approver = Callable[[ApprovalRequest], "bool | str | ApprovalDecision | Awaitable[bool | str | ApprovalDecision]"]

NOBODY_TO_ASK = "no one could approve it here (pass approve=callback, or run it interactively)"


def as_decision(value: Any, by: str) -> ApprovalDecision:
    """A callback's answer as a decision (``True``/``False``/reason string/ApprovalDecision)."""
    if isinstance(value, ApprovalDecision):
        return value
    if isinstance(value, bool):
        return ApprovalDecision(value, None, by)
    if isinstance(value, str):
        return ApprovalDecision(False, value.strip() or None, by)
    if value is None:
        return ApprovalDecision(False, "the approver gave no answer", by)
    raise TypeError(f"an approver must return True, False, a reason string or an ApprovalDecision, not {value!r}")


async def decide(approver: Approver | None, request: ApprovalRequest, timeout: float | None) -> ApprovalDecision:
    """Ask ``approver`` (sync callables run in a worker thread); deny on timeout or when nobody can be asked."""
    if approver is None:
        return ApprovalDecision(False, NOBODY_TO_ASK, "timeout")

    async def ask() -> ApprovalDecision:
        if inspect.iscoroutinefunction(approver) or inspect.iscoroutinefunction(
                getattr(approver, "__call__", None)):  # noqa: B004 - async callable objects
            value = await approver(request)  # type: ignore[misc]
        else:
            # A sync approver may block (input(), a GUI dialog): keep the loop and the other calls moving.
            value = await asyncio.to_thread(approver, request)
            if inspect.isawaitable(value):
                value = await value
        return as_decision(value, "callback")

    if timeout is None:
        return await ask()
    try:
        return await asyncio.wait_for(ask(), timeout)
    except asyncio.TimeoutError:
        return ApprovalDecision(False, f"no answer within {timeout:g}s", "timeout")


def denial_message(decision: ApprovalDecision) -> str:
    """What the model is told about a denied call."""
    reason = f": {decision.reason}" if decision.reason else ""
    return f"Error: this tool call was not executed; it was denied by the user{reason}."
