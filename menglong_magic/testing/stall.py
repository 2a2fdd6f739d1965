"""How long the event loop went without running anything else, for tests and benchmarks."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any


class GcClock:
    """The garbage collections this process ran while open (``with``): each one's generation and seconds."""

    def __init__(self) -> None:
        self.collections: list[tuple[int, float]] = []
        self._started = 0.0

    @property
    def seconds(self) -> float:
        """Time spent in every collection."""
        return sum(took for _generation, took in self.collections)

    @property
    def full(self) -> list[float]:
        """How long each full collection (generation 2) took."""
        return [took for generation, took in self.collections if generation == 2]

    def _on_collection(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.collections.append((info.get("generation", 0), time.perf_counter() - self._started))

    def __enter__(self) -> GcClock:
        gc.callbacks.append(self._on_collection)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._on_collection)


class StallMonitor:
    """The longest time the event loop did not get round to a 1 ms timer, while it runs (``async with``).

    It also records how long each full garbage collection (generation 2) took meanwhile: one stops the whole process
    for as long as walking every object of its heap takes (on a 2-core machine ~1 ms per 1,000 objects), whoever
    caused it, so a stall that contains one says little about the code being measured.
    """

    def __init__(self) -> None:
        self.longest = 0.0
        self._task: asyncio.Task[None] | None = None
        self._collections = GcClock()

    @property
    def full_collections(self) -> list[float]:
        return self._collections.full

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(0.001)
            self.longest = max(self.longest, loop.time() - t - 0.001)

    async def __aenter__(self) -> StallMonitor:
        self._collections.__enter__()
        self._task = asyncio.ensure_future(self._watch())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._collections.__exit__()
