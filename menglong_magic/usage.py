"""Token usage types, shared by the models and the agent (no dependency on either)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
    #: Price of each request in US dollars (genai-prices), ``None`` where the model or provider is unknown.
    costs: list[float | None] = field(default_factory=list)
    tool_calls: int = 0

    def add(self, usage: Usage | None, cost: float | None = None) -> None:
        self.requests.append(usage)
        self.costs.append(cost)

    def __add__(self, other: RunUsage) -> RunUsage:
        """Usage of two runs together (batches and maps sum their items' usage)."""
        total = RunUsage(list(self.requests), self._padded_costs(), self.tool_calls)
        total.extend(other)
        return total

    def extend(self, other: RunUsage) -> None:
        """Add another run's requests (and their prices) to this one, in place."""
        self.costs = self._padded_costs() + other._padded_costs()
        self.requests.extend(other.requests)
        self.tool_calls += other.tool_calls

    def to_data(self) -> dict[str, Any]:
        """JSON-ready: ``{"requests": [[in, out] | null, ...], "costs": [...]}`` (what a map's journal stores)."""
        return {"requests": [None if u is None else [u.input_tokens, u.output_tokens] for u in self.requests],
                "costs": self._padded_costs()}

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> RunUsage:
        requests = [None if r is None else Usage(r[0], r[1]) for r in data.get("requests", [])]
        return cls(requests, list(data.get("costs", [])))

    def _padded_costs(self) -> list[float | None]:
        return self.costs + [None] * (len(self.requests) - len(self.costs))

    @property
    def cost(self) -> float | None:
        """Total price in US dollars; ``None`` unless every request's price is known (never a guess)."""
        costs = self._padded_costs()
        if not costs or any(c is None for c in costs):
            return None
        return float(sum(c for c in costs if c is not None))

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
            return "usage not reported by this model" if self.unknown_requests else "tokens unknown"
        text = f"{total} tokens ({self.input_tokens or 0} in, {self.output_tokens or 0} out)"
        if self.unknown_requests:
            text += f", usage of {self.unknown_requests} request(s) not reported by this model"
        cost = self.cost
        if cost is not None:
            text += f", {format_cost(cost)}"
        return text


def format_cost(dollars: float) -> str:
    """US dollars to six decimals without trailing zeros: "$0.00021", "$1.5", "$0"."""
    return f"${dollars:.6f}".rstrip("0").rstrip(".") if dollars else "$0"


@dataclass(frozen=True)
class UsageLimits:
    """Caps for one run. When the next step would pass one, the run stops with ``stop_reason="usage_limit"``,
    keeping everything done so far. Token limits count what the server reported (unknown usage counts 0).
    """

    max_requests: int | None = None
    max_tool_calls: int | None = None
    max_input_tokens: int | None = None
    max_output_tokens: int | None = None
    max_total_tokens: int | None = None

    def before_request(self, usage: RunUsage) -> str | None:
        """The limit that forbids another model request, if any."""
        if self.max_requests is not None and usage.request_count + 1 > self.max_requests:
            return f"max_requests={self.max_requests}"
        return self._tokens(usage, reached=True)

    def after_response(self, usage: RunUsage, new_tool_calls: int) -> str | None:
        """The limit that forbids acting on a response (its tokens, or running its tool calls)."""
        exceeded = self._tokens(usage, reached=False)
        if exceeded:
            return exceeded
        if self.max_tool_calls is not None and usage.tool_calls + new_tool_calls > self.max_tool_calls:
            return f"max_tool_calls={self.max_tool_calls}"
        return None

    def _tokens(self, usage: RunUsage, *, reached: bool) -> str | None:
        for name, value in (("max_input_tokens", usage.input_tokens), ("max_output_tokens", usage.output_tokens),
                            ("max_total_tokens", usage.total_tokens)):
            limit = getattr(self, name)
            if limit is None or value is None:
                continue
            if value > limit or (reached and value >= limit):
                return f"{name}={limit}"
        return None
