"""Token usage types, shared by the models and the agent (no dependency on either)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Usage:
    """Token usage of one model request, as the server reported it."""

    input_tokens: int | None = None
    output_tokens: int | None = None

    @property
    def total_tokens(self) -> int | None:
        if self.input_tokens is None and self.output_tokens is None:
            return None
        return (self.input_tokens or 0) + (self.output_tokens or 0)


@dataclass
class RunUsage:
    """Usage of a run: one entry per model request (``None`` where the server omitted it), and totals."""

    requests: list[Usage | None] = field(default_factory=list)

    def _sum(self, attr: str) -> int | None:
        known = [getattr(u, attr) for u in self.requests if u is not None and getattr(u, attr) is not None]
        return sum(known) if known else None

    @property
    def input_tokens(self) -> int | None:
        return self._sum("input_tokens")

    @property
    def output_tokens(self) -> int | None:
        return self._sum("output_tokens")

    @property
    def total_tokens(self) -> int | None:
        return self._sum("total_tokens")

    @property
    def request_count(self) -> int:
        return len(self.requests)

    @property
    def unknown_requests(self) -> int:
        """Requests whose usage the server did not report: totals are then lower bounds."""
        return sum(1 for u in self.requests if u is None)

    def describe(self) -> str:
        total = self.total_tokens
        if total is None:
            return "tokens unknown"
        text = f"{total} tokens ({self.input_tokens or 0} in, {self.output_tokens or 0} out)"
        if self.unknown_requests:
            text += f", {self.unknown_requests} request(s) unreported"
        return text
