"""A run with ~1000 events with the widget panel attached vs detached (no front end: comms are no-ops).

Run: python bench/bench_panel.py   (target ratio <= 1.1, with a plain answer and with math in the answer)
"""

from __future__ import annotations

import asyncio
import statistics
import time

from menglong_magic import ChatAgent, tool
from menglong_magic.markup import render_markdown
from menglong_magic.models import ScriptedModel, call, calls, reply
from menglong_magic.ui.panel import RunPanel

TEXT = "word " * 400  # streamed in 4-character deltas: ~500 TextDelta events per answer
# The same length with formulas (the math plugins' inline and block rules run on every panel flush).
MATH_TEXT = ((r"Fit $\hat{y}_{t} = \beta_{0} + \beta_{1} x_{t}$ and $a*b*c$ for $\{x \mid x > 0\}$, "
              r"also \(x_{1}*x_{2}\) at $5 and $10." "\n\n"
              r"$$\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}$$" "\n\n") * 13)[:len(TEXT)]


@tool
async def pause() -> str:
    await asyncio.sleep(0.01)
    return "ok"


def script(answer: str) -> list:
    steps: list = []
    for _ in range(20):
        steps.append(calls(call("pause"), call("pause"), text="thinking " * 5))
    steps.append(reply(answer))
    return steps


async def run(attached: bool, answer: str = TEXT) -> tuple[float, int, int]:
    agent = ChatAgent(model=ScriptedModel(script(answer), stream_chunk=4), mode="auto", tools=[pause],
                      max_iterations=30)
    events = 0

    def count(_e: object) -> None:
        nonlocal events
        events += 1

    panel = RunPanel(title="bench", update_interval=0.1) if attached else None
    if panel is not None:
        panel._loop = asyncio.get_running_loop()

        def handler(e: object) -> None:
            count(e)
            panel.handle(e)  # type: ignore[arg-type]
    else:
        handler = count
    t = time.perf_counter()
    await agent.arun("go", on_event=handler)
    if panel is not None:
        panel.flush()
        panel.close()  # release the widget model (no front end here, so no final display)
    return time.perf_counter() - t, events, panel.flushes if panel else 0


def render_ms(text: str, repeat: int = 200, math: bool = True) -> float:
    """One uncached Markdown render of ``text`` (the panel renders the streamed answer once per flush);
    ``math=False``: markdown-it alone, as before the math plugins."""
    if math:
        render = render_markdown.__wrapped__  # past the lru_cache
    else:
        from markdown_it import MarkdownIt

        render = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"]).render
    render(text)
    t = time.perf_counter()
    for _ in range(repeat):
        render(text)
    return (time.perf_counter() - t) / repeat * 1000


def main() -> None:
    for label, answer in (("plain answer", TEXT), ("math answer", MATH_TEXT)):
        detached, attached = [], []
        for _ in range(5):
            d, events, _ = asyncio.run(run(False, answer))
            a, _, flushes = asyncio.run(run(True, answer))
            detached.append(d)
            attached.append(a)
        d, a = statistics.median(detached), statistics.median(attached)
        print(f"{label}: run with {events} events: detached {d * 1000:.0f} ms, panel attached {a * 1000:.0f} ms "
              f"({flushes} panel flushes), ratio {a / d:.2f}x (target <= 1.1x); one Markdown render of the "
              f"{len(answer)}-character answer {render_ms(answer):.2f} ms (without the math plugins "
              f"{render_ms(answer, math=False):.2f} ms)")


if __name__ == "__main__":
    main()
