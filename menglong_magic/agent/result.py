"""Results of runs: attribute access, plus the seed's mapping access (``result["task_completed"]``)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..usage import RunUsage, Usage
from .approval import ApprovalDecision

__all__ = ["IterationLog", "RunResult", "RunUsage", "ToolCallRecord", "Usage"]


@dataclass
class ToolCallRecord:
    """One tool call of an iteration, as executed."""

    id: str
    name: str
    arguments: Any  # parsed dict, or the raw string when it was not valid JSON
    result: str | None = None
    error: str | None = None
    duration: float = 0.0
    approval: ApprovalDecision | None = None  # set when the call needed approval

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def status(self) -> str:
        """ "ok" | "error" | "denied" | "cancelled" | "pending" (not finished)."""
        if self.approval is not None and not self.approval.approved:
            return "denied"
        if self.error is not None:
            return "cancelled" if self.error.startswith("cancelled") else "error"
        return "ok" if self.result is not None else "pending"


@dataclass
class IterationLog:
    """One iteration: one model call and the tool calls it asked for."""

    iteration: int
    text: str | None = None
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    usage: Usage | None = None
    duration: float = 0.0
    error: str | None = None


_SEED_KEYS = (
    "task",
    "final_output",
    "task_completed",
    "iterations_used",
    "execution_time",
    "stop_reason",
    "iterations",
    "usage",
    "error",
    "model",
)


@dataclass
class RunResult(Mapping[str, Any]):
    """The outcome of ``arun``/``chat_async``. Everything done before a stop is kept."""

    task: str
    final_output: str
    #: "completed" | "max_iterations" | "timeout" | "cancelled" | "error" | "usage_limit" | "output_invalid" |
    #: "no_answer" (the model ended its turn with neither text nor tool calls)
    stop_reason: str
    iterations: list[IterationLog]
    usage: RunUsage
    execution_time: float
    model: str = ""
    error: str | None = None
    run_id: str = ""
    messages: list[dict[str, Any]] = field(default_factory=list)  # the messages this run added
    #: The exception that ended the run with ``stop_reason == "error"`` (secrets already removed).
    exception: BaseException | None = field(default=None, repr=False, compare=False)
    #: The answer as the run's ``output_type`` (None without one, or when it never validated).
    output: Any = None

    @property
    def task_completed(self) -> bool:
        return self.stop_reason == "completed"

    @property
    def iterations_used(self) -> int:
        return len(self.iterations)

    def raise_for_error(self) -> None:
        """Raise the run's exception if it ended with ``stop_reason == "error"``."""
        if self.stop_reason == "error":
            raise self.failure()

    def failure(self) -> BaseException:
        """The exception a failed run stands for: its own, else a RuntimeError with its error text."""
        return self.exception if self.exception is not None else RuntimeError(self.error or "the run failed")

    @property
    def tool_calls(self) -> list[ToolCallRecord]:
        return [call for it in self.iterations for call in it.tool_calls]

    # Mapping access, for code written against the seed's dict results.
    def __getitem__(self, key: str) -> Any:
        if key not in _SEED_KEYS:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(_SEED_KEYS)

    def __len__(self) -> int:
        return len(_SEED_KEYS)

    # Mapping's __eq__ would compare as dicts; identity semantics suit a result object better.
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def summary_line(self) -> str:
        calls = len(self.tool_calls)
        return (
            f"{self.stop_reason} · {self.iterations_used} iteration(s) · {calls} tool call(s) · "
            f"{self.execution_time:.2f}s · {self.usage.describe()}"
        )

    def __repr__(self) -> str:
        from ..markup import shorten, terminal_safe  # a terminal shows this repr: the model's text must not drive it

        text = shorten(self.final_output, 401)
        lines = [f"RunResult({self.summary_line()})"]
        if self.error:
            lines.append(f"error: {self.error}")
        if text:
            lines.append(text)
        return terminal_safe("\n".join(lines))

    def _repr_html_(self) -> str:
        """A RunResult shown in a notebook: the summary, then the answer rendered as Markdown (raw HTML from
        the model shown as text, as in the panel's final view) or the typed output as a table."""
        from html import escape

        from ..markup import NO_TYPESET, output_html, render_markdown

        parts = [f'<div class="mm-result {NO_TYPESET}"><div><b>{escape(self.stop_reason)}</b> · '
                 f"{escape(self.summary_line().split(' · ', 1)[1])}</div>"]
        if self.error:
            parts.append(f'<div style="color:#cf222e">error: {escape(self.error)}</div>')
        if self.output is not None:
            parts.append(output_html(self.output))
        elif self.final_output:
            parts.append(render_markdown(self.final_output))
        return "".join(parts) + "</div>"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for APIs and logs)."""
        return {
            "task": self.task,
            "final_output": self.final_output,
            "task_completed": self.task_completed,
            "iterations_used": self.iterations_used,
            "execution_time": self.execution_time,
            "stop_reason": self.stop_reason,
            "error": self.error,
            "model": self.model,
            "usage": {
                "input_tokens": self.usage.input_tokens,
                "output_tokens": self.usage.output_tokens,
                "total_tokens": self.usage.total_tokens,
                "unknown_requests": self.usage.unknown_requests,
            },
            "iterations": [
                {
                    "iteration": it.iteration,
                    "text": it.text,
                    "duration": it.duration,
                    "error": it.error,
                    "tool_calls": [
                        {
                            "id": c.id,
                            "name": c.name,
                            "arguments": c.arguments,
                            "result": c.result,
                            "error": c.error,
                            "duration": c.duration,
                            "status": c.status,
                            "approval": None if c.approval is None else {
                                "approved": c.approval.approved, "reason": c.approval.reason, "by": c.approval.by},
                        }
                        for c in it.tool_calls
                    ],
                }
                for it in self.iterations
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), default=str)
