"""A fair share of the event loop for model requests, so that a big batch never holds the loop for long.

Each model request costs the client a millisecond or more of CPU (the SDK builds the request, the HTTP
library sends it, and reads and decodes the answer), and a batch's requests become ready together: the
answers that arrive while the loop is busy all resume in its next iteration, which is then longer, so
more answers arrive during it. With 100 items in flight that settles at iterations of 10-20 ms on a
2-core machine, and a widget event, a Stop click or another cell's task waits one or two of them.

:class:`LoopShare` caps that work per loop iteration. A run takes a turn before each model request (before it
takes a limiter slot: a request waiting for its turn is not in flight), and the model takes one when an answer's
headers arrive, before the answer is read; answers go before new requests. Turns are given at once while less
than ``budget`` seconds of the iteration have passed since its first; after that they wait, in order, for later
iterations, and a callback early in each iteration lets the next few go, as many as keep the iterations about one
to two budgets long. The loop then turns every few milliseconds under any load with the same throughput (the CPU
does the same work, in more and shorter iterations), and a loop that is not busy gives every turn at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from .loopcache import PerLoop

#: Seconds of an iteration that turns are given at once; after that they wait for a later iteration.
#: Measured (bench/bench_map.py, a map of 100 with a journal and the panel): 1 ms and 2 ms cost no throughput
#: and halve the longest stall; 1 ms leaves the most margin under the 20 ms a notebook user notices.
DEFAULT_BUDGET = 0.001
#: At most this many waiting turns let go in one iteration, whatever the last iterations suggested.
MAX_PER_TICK = 64


class LoopShare:
    """Turns for the model requests on one event loop: about ``budget`` seconds of them per loop iteration.

    ``clock`` (seconds, monotonic) is ``time.perf_counter``; tests pass their own.
    """

    def __init__(self, budget: float = DEFAULT_BUDGET, clock: Callable[[], float] = time.perf_counter) -> None:
        self.budget = budget
        self._clock = clock
        self._first: float | None = None  # when this iteration's first turn was given
        # Answers go before new requests: reading one frees its slot and may carry the server's "slow down", which
        # new requests queued ahead of it would only run into (a map's first burst: 100 sent where 20 fit).
        self._answers: deque[asyncio.Future[None]] = deque()
        self._starts: deque[asyncio.Future[None]] = deque()
        self._per_tick = 1  # how many waiting turns one iteration lets go
        self._last_tick: float | None = None
        self._tick_scheduled = False
        #: Turns taken, and how many of them waited for a later iteration.
        self.turns = 0
        self.deferred = 0

    def __repr__(self) -> str:
        return (f"LoopShare(budget={self.budget}, turns={self.turns}, deferred={self.deferred}, "
                f"waiting={self.waiting})")

    @property
    def waiting(self) -> int:
        """Turns waiting for a later iteration."""
        return len(self._answers) + len(self._starts)

    async def turn(self, *, answer: bool = False) -> None:
        """Return when this request may go on (``answer``: to read its answer): at once, unless this iteration has
        had its share or turns wait ahead of this one (answers wait only behind answers)."""
        self.turns += 1
        ahead = self._answers if answer else self._answers or self._starts
        if not ahead:
            now = self._clock()
            if self._first is None:
                self._first = now
                self._schedule_tick()  # the next iteration starts a new share
                return
            if now - self._first < self.budget:
                return
        self.deferred += 1
        future = asyncio.get_running_loop().create_future()
        queue = self._answers if answer else self._starts
        queue.append(future)
        self._schedule_tick()
        try:
            await future
        except asyncio.CancelledError:
            if future in queue:
                queue.remove(future)
            raise

    def _schedule_tick(self) -> None:
        if not self._tick_scheduled:
            self._tick_scheduled = True
            asyncio.get_running_loop().call_soon(self._tick)

    def _tick(self) -> None:
        """Early in an iteration: a new share; while turns wait, the next few let go (they run in the next one)."""
        self._tick_scheduled = False
        self._first = None
        now = self._clock()
        last, self._last_tick = self._last_tick, now
        if not self.waiting:
            self._last_tick = None
            return
        if last is not None:  # steer the iterations toward one to two budgets long
            took = now - last
            if took > 2 * self.budget:  # cut in proportion: the steps may have become much dearer
                self._per_tick = max(1, int(self._per_tick * self.budget / took))
            elif took < self.budget:
                self._per_tick = min(self._per_tick + 1, MAX_PER_TICK)
        released = 0
        for queue in (self._answers, self._starts):
            while queue and released < self._per_tick:
                future = queue.popleft()
                if not future.done():  # a cancelled turn
                    future.set_result(None)
                    released += 1
        self._schedule_tick()


_shares: PerLoop[LoopShare] = PerLoop(LoopShare)


def loop_share() -> LoopShare:
    """The running loop's :class:`LoopShare` (one per loop, shared by every model on it)."""
    return _shares.get()
