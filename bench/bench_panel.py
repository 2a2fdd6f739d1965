"""A run with ~1000 events with the widget panel attached vs detached (no front end: comms are no-ops).

Run: python bench/bench_panel.py   (target ratio <= 1.1)
"""

from __future__ import annotations

import asyncio
import statistics
import time

from menglong_magic import ChatAgent, tool
from menglong_magic.models import ScriptedModel, call, calls, reply
from menglong_magic.ui.panel import RunPanel

TEXT = "word " * 400  # streamed in 4-character deltas: ~500 TextDelta events per answer


@tool
async def pause() -> str:
    await asyncio.sleep(0.01)
    return "ok"


def script() -> list:
    steps: list = []
    for _ in range(20):
        steps.append(calls(call("pause"), call("pause"), text="thinking " * 5))
    steps.append(reply(TEXT))
    return steps


async def run(attached: bool) -> tuple[float, int, int]:
    agent = ChatAgent(model=ScriptedModel(script(), stream_chunk=4), mode="auto", tools=[pause], max_iterations=30)
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


def main() -> None:
    detached, attached = [], []
    for _ in range(5):
        d, events, _ = asyncio.run(run(False))
        a, _, flushes = asyncio.run(run(True))
        detached.append(d)
        attached.append(a)
    d, a = statistics.median(detached), statistics.median(attached)
    print(f"run with {events} events: detached {d * 1000:.0f} ms, panel attached {a * 1000:.0f} ms "
          f"({flushes} panel flushes), ratio {a / d:.2f}x (target <= 1.1x)")


if __name__ == "__main__":
    main()
