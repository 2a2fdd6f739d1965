"""A readable summary of an agent's conversation."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..markup import shorten

if TYPE_CHECKING:
    from .chat_agent import ChatAgent


@dataclass
class ContextSummary:
    """What the agent's history holds."""

    system: str | None
    messages: int
    by_role: dict[str, int] = field(default_factory=dict)
    tool_calls: int = 0
    tools: list[str] = field(default_factory=list)
    tokens_last_run: int | None = None
    last_user: str | None = None
    last_answer: str | None = None

    @classmethod
    def of(cls, agent: ChatAgent) -> ContextSummary:
        msgs: list[dict[str, Any]] = agent.messages
        last_user = next((m.get("content") for m in reversed(msgs) if m.get("role") == "user"), None)
        last_answer = next(
            (m.get("content") for m in reversed(msgs) if m.get("role") == "assistant" and m.get("content")), None
        )
        return cls(
            system=agent.system,
            messages=len(msgs),
            by_role=dict(Counter(m.get("role", "?") for m in msgs)),
            tool_calls=sum(len(m.get("tool_calls") or ()) for m in msgs),
            tools=sorted(agent.tools),
            tokens_last_run=agent.last_result.usage.total_tokens if agent.last_result else None,
            last_user=last_user,
            last_answer=last_answer,
        )

    def __str__(self) -> str:
        roles = ", ".join(f"{n} {r}" for r, n in self.by_role.items()) or "empty"
        lines = [
            f"system prompt: {self.system!r}" if self.system else "system prompt: none",
            f"messages: {self.messages} ({roles})",
            f"tool calls: {self.tool_calls}; tools: {', '.join(self.tools) or 'none'}",
            f"tokens (last run): {'unknown' if self.tokens_last_run is None else self.tokens_last_run}",
        ]
        if self.last_user is not None:
            lines.append(f"last user message: {_short(self.last_user)}")
        if self.last_answer is not None:
            lines.append(f"last answer: {_short(self.last_answer)}")
        return "\n".join(lines)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(str(self))


def _short(text: Any, limit: int = 120) -> str:
    return shorten(str(text), limit)
