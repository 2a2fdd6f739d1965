"""How long the event loop went without running anything else, for tests and benchmarks."""

from __future__ import annotations

import asyncio


class StallMonitor:
    """The longest time the event loop did not get round to a 1 ms timer, while it runs (``async with``)."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(0.001)
            self.longest = max(self.longest, loop.time() - t - 0.001)

    async def __aenter__(self) -> StallMonitor:
        self._task = asyncio.ensure_future(self._watch())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
