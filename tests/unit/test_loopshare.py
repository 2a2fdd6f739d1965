"""LoopShare: turns for model requests, about ``budget`` seconds of them per event-loop iteration, in order."""

from __future__ import annotations

import asyncio

import pytest

from menglong_magic.loopshare import MAX_PER_TICK, LoopShare, loop_share


class FakeClock:
    """Seconds that pass only when a step says it worked."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class IterationCounter:
    """Counts event-loop iterations: a callback that schedules itself once per iteration while it runs."""

    def __init__(self) -> None:
        self.count = 0
        self._running = True

    def start(self) -> IterationCounter:
        asyncio.get_running_loop().call_soon(self._tick)
        return self

    def _tick(self) -> None:
        if self._running:
            self.count += 1
            asyncio.get_running_loop().call_soon(self._tick)

    def stop(self) -> None:
        self._running = False


async def run_steps(share: LoopShare, clock: FakeClock, costs: list[float]) -> tuple[list[int], list[int]]:
    """Start one task per cost at once; each takes a turn, then 'works' its cost. Returns the order in which they
    went on and the iteration each went on in."""
    counter = IterationCounter().start()
    order: list[int] = []
    iterations: list[int] = []

    async def step(index: int) -> None:
        await share.turn()
        order.append(index)
        iterations.append(counter.count)
        clock.now += costs[index]

    await asyncio.gather(*(step(i) for i in range(len(costs))))
    counter.stop()
    return order, iterations


def work_per_iteration(iterations: list[int], costs_in_order: list[float]) -> dict[int, float]:
    work: dict[int, float] = {}
    for iteration, cost in zip(iterations, costs_in_order, strict=True):
        work[iteration] = work.get(iteration, 0.0) + cost
    return work


async def test_a_loop_that_is_not_busy_never_waits() -> None:
    share = LoopShare(budget=0.001)
    for _ in range(50):
        await share.turn()
        await asyncio.sleep(0)  # one request per iteration, as a sequential run makes them
    assert (share.turns, share.deferred) == (50, 0)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not share._tick_scheduled  # no callback left running once nobody waits: an idle loop stays idle


@pytest.mark.parametrize("cost", [0.0002, 0.0005, 0.003], ids=["cheap", "medium", "dear"])
async def test_work_started_together_is_spread_over_iterations_in_order(cost: float) -> None:
    clock = FakeClock()
    share = LoopShare(budget=0.001, clock=clock)
    costs = [cost] * 40
    order, iterations = await run_steps(share, clock, costs)
    assert order == list(range(40))  # first come, first served
    assert share.deferred > 0
    work = work_per_iteration(iterations, costs)
    assert len(work) > 1
    # The first iteration gives turns while less than a budget has passed; later ones let go as many as kept the
    # last iterations under two budgets (halving when one went over): never more than that plus one dear step.
    assert max(work.values()) <= 2 * share.budget + cost + 1e-9, work
    assert work[min(work)] <= share.budget + cost + 1e-9


async def test_steps_that_become_dearer_are_let_go_fewer_at_a_time() -> None:
    clock = FakeClock()
    share = LoopShare(budget=0.001, clock=clock)
    costs = [0.0001] * 60 + [0.004] * 10  # many cheap ones grow the share per iteration; then dear ones come
    _, iterations = await run_steps(share, clock, costs)
    dear_iterations = iterations[60:]
    per_iteration = {i: dear_iterations.count(i) for i in set(dear_iterations)}
    # One dear step alone overruns the budget: within a few iterations they go one at a time.
    assert list(per_iteration.values())[-5:] == [1] * 5, per_iteration
    assert share._per_tick <= MAX_PER_TICK


async def test_a_cancelled_turn_does_not_hold_up_the_others() -> None:
    clock = FakeClock()
    share = LoopShare(budget=0.0, clock=clock)  # every turn after an iteration's first waits
    went: list[int] = []

    async def step(index: int) -> None:
        await share.turn()
        went.append(index)

    tasks = [asyncio.ensure_future(step(i)) for i in range(6)]
    await asyncio.sleep(0)  # all have asked: 0 went on, the rest wait
    tasks[2].cancel()
    tasks[3].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert went == [0, 1, 4, 5]
    assert [type(r) for r in results].count(asyncio.CancelledError) == 2
    assert not share.waiting


async def test_one_share_per_loop() -> None:
    share = loop_share()
    assert loop_share() is share

    async def get() -> LoopShare:
        return loop_share()

    assert await asyncio.to_thread(asyncio.run, get()) is not share


async def test_a_run_waiting_for_its_turn_holds_no_limiter_slot() -> None:
    """A request that waits for a loop turn is not in flight: the limiter counts only what the server has (a map's
    first burst against a limited server would otherwise send every item admitted while the turns waited)."""
    from menglong_magic import ChatAgent
    from menglong_magic.models.scripted import ScriptedModel, reply

    share = loop_share()
    share.budget = 0.0  # any turn after the first of an iteration waits for a later one
    agent = ChatAgent(model=ScriptedModel([reply(f"a{i}", delay=0.05) for i in range(5)]))
    limiter = agent.limiter()
    tasks = [asyncio.ensure_future(agent.fork().chat_async("hi")) for _ in range(5)]
    waited = 0
    while not all(t.done() for t in tasks):
        await asyncio.sleep(0)
        waited = max(waited, share.waiting)
        assert limiter.in_flight + share.waiting <= 5
    assert waited >= 3
    assert sorted(t.result() for t in tasks) == [f"a{i}" for i in range(5)]


async def test_answers_go_before_new_requests() -> None:
    """Reading an answer frees its slot and may carry the server's "slow down": new requests do not go ahead of it."""
    share = LoopShare(budget=0.0, clock=FakeClock())
    went: list[str] = []

    async def step(name: str, answer: bool) -> None:
        await share.turn(answer=answer)
        went.append(name)

    first = asyncio.ensure_future(step("start 0", False))  # takes this iteration's turn
    starts = [asyncio.ensure_future(step(f"start {i}", False)) for i in (1, 2, 3)]
    answers = [asyncio.ensure_future(step(f"answer {i}", True)) for i in (1, 2)]
    await asyncio.gather(first, *starts, *answers)
    assert went == ["start 0", "answer 1", "answer 2", "start 1", "start 2", "start 3"]
