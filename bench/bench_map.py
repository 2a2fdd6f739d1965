"""Maps against a hand-written asyncio.gather over AsyncOpenAI, in one run, on a server that keeps up.

The server is bench/fast_openai_server.py (uvicorn + httptools + uvloop, in its own process).

1. a map of 100 two-call items (tool call + answer) with a journal and the live map panel attached, at 0 ms
   and 50 ms latency, vs ``asyncio.gather`` of the same calls written by hand (target <= 1.25x), and vs the same
   gather over the SDK's aiohttp client (the transport the model uses, so the engine's own cost shows); the longest
   event-loop stall during the map (target < 20 ms), how many of its model turns waited for a later loop iteration
   (menglong_magic.loopshare), and the same map without journal and panel;
2. 1,000 one-call items at 50 ms and at 200 ms against a server answering 429 + Retry-After 0.1 s beyond 20
   requests in flight: map_async "auto" (targets: 0 failed, <= 1.3x the limit-bound ideal 1,000 / 20 x latency),
   a first map (nothing learned about the endpoint) and a later one (it starts at the learned window), in
   interleaved pairs, each run after a full garbage collection and with the collections within it timed (the median
   and the range of the runs), vs the raw gather (the SDK's own
   retries; its failed items printed; stopped after 60 s) and vs a gather over create() bounded by exactly 20
   (what a careful user writes: at 50 ms this client's CPU, not the server's limit, is the bound on a slow
   machine: 20 in flight at 50 ms asks for 400 requests a second, ~2.5 ms of CPU each at most), and the same
   gather over the SDK's aiohttp client (the transport the model uses);
2b. 1,000 one-call items at 1 s latency on a server without a limit (~300 in flight): map_async vs a gather over
   create(), with CPU per request (httpx's pool works per connection on every request: the model spreads
   requests over one HTTP client per 32 in flight);
3. 10,000 items with the panel attached, against 1,000: time and peak RSS per item (target: linear).

Every figure is a median of interleaved runs; wall-clock ratios move with the load of a shared machine, so
the CPU time of this process (``time.process_time``, all threads) is printed beside them.

Run: python bench/bench_map.py [--repeats N] [--quick] [--rate-only]   (--quick skips 3; --rate-only runs 2)
"""

from __future__ import annotations

import asyncio
import gc
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fast_openai_server import FastServer
from hand_loop import aiohttp_client, hand_written, lookup

from menglong_magic import ChatAgent
from menglong_magic.agent.limiter import endpoint_key, forget_learned
from menglong_magic.loopshare import loop_share
from menglong_magic.maps.run import Journal
from menglong_magic.models import OpenAIModel
from menglong_magic.testing.stall import GcClock, StallMonitor
from menglong_magic.ui.mapview import MapPanel

LATENCY = 0.05
#: A latency at which this client's CPU (the SDK costs 2-3 ms a request over aiohttp, 3.5-5 ms over httpx, on the
#: 2-core test machine) is not the bound: 20 in flight at 50 ms asks for 400 requests a second, at 200 ms for 100.
SLOW_LATENCY = 0.2
RAW_CAP = 60.0
REPEATS = int(sys.argv[sys.argv.index("--repeats") + 1]) if "--repeats" in sys.argv else 5


def attached_panel(title: str) -> MapPanel:
    """The map panel as ``%agent_map`` shows it (widget, 0.2 s throttled flushes), without a front end."""
    panel = MapPanel(title=title, update_interval=0.2)
    panel._loop = asyncio.get_running_loop()  # what show() records; show() itself needs a display
    return panel


class TimedJournal(Journal):
    """The journal, with the longest time one ``record`` call kept the event loop."""

    longest_record = 0.0
    total_record = 0.0
    records = 0

    def record(self, *args: Any, **kwargs: Any) -> None:
        t = time.perf_counter()
        super().record(*args, **kwargs)
        took = time.perf_counter() - t
        self.longest_record = max(self.longest_record, took)
        self.total_record += took
        self.records += 1


async def measure(coro: Any) -> tuple[float, float, Any]:
    c, t = time.process_time(), time.perf_counter()
    result = await coro
    return time.perf_counter() - t, time.process_time() - c, result


async def map_of_100(latency: float) -> None:
    with FastServer(latency=latency) as server, tempfile.TemporaryDirectory() as tmp:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-bench")  # the SDK retries, as the agent does
        hand = hand_written(client)
        # The same gather over the SDK's aiohttp client, which the agent's model uses: what the transport alone gives.
        aio_client = aiohttp_client(server.base_url)
        aio_hand = hand_written(aio_client)
        await aio_hand("w")

        agent = ChatAgent(model=OpenAIModel("m", base_url=server.base_url, api_key="sk-bench"), mode="auto",
                          tools=[lookup])
        await hand("w")
        await agent.map_async(["w"])
        wall: dict[str, list[float]] = {"gather": [], "map": [], "plain": [], "aio gather": []}
        cpu: dict[str, list[float]] = {"gather": [], "map": [], "plain": [], "aio gather": []}
        stalls: dict[str, list[float]] = {"gather": [], "map": [], "plain": [], "record": [], "mean record": []}
        collections: dict[str, list[float]] = {"map": [], "plain": []}  # full garbage collections during the maps
        share = loop_share()
        waited: list[float] = []  # the share of the map's loop turns that waited for a later iteration
        for run in range(REPEATS):
            texts = [f"r{run} m{i}" for i in range(100)]  # new prompts each run: nothing comes from the journal
            async with StallMonitor() as monitor:
                w, c, _ = await measure(asyncio.gather(*(hand(t) for t in texts)))
            wall["gather"].append(w)
            cpu["gather"].append(c)
            stalls["gather"].append(monitor.longest)
            w, c, _ = await measure(asyncio.gather(*(aio_hand(t) for t in texts)))
            wall["aio gather"].append(w)
            cpu["aio gather"].append(c)
            panel = attached_panel("bench")
            journal = await asyncio.to_thread(TimedJournal, Path(tmp) / "j.sqlite")
            turns, deferred = share.turns, share.deferred
            async with StallMonitor() as monitor:
                w, c, result = await measure(agent.map_async(texts, journal=journal, on_event=panel.handle))
            panel.finish()
            await asyncio.to_thread(journal.close)
            assert not result.errors and result.requested == 100, result
            wall["map"].append(w)
            cpu["map"].append(c)
            stalls["map"].append(monitor.longest)
            collections["map"] += monitor.full_collections
            waited.append((share.deferred - deferred) / max(share.turns - turns, 1))
            stalls["record"].append(journal.longest_record)
            stalls["mean record"].append(journal.total_record / max(journal.records, 1))
            async with StallMonitor() as monitor:
                w, c, result = await measure(agent.map_async([f"plain {t}" for t in texts]))
            stalls["plain"].append(monitor.longest)
            collections["plain"] += monitor.full_collections
            wall["plain"].append(w)
            cpu["plain"].append(c)
        await client.close()
        await aio_client.close()
    g, m, p, a = (statistics.median(wall[k]) for k in ("gather", "map", "plain", "aio gather"))
    gc, mc, pc, ac = (statistics.median(cpu[k]) for k in ("gather", "map", "plain", "aio gather"))
    print(f"1. map of 100 two-call items at {latency * 1000:.0f} ms: gather {g * 1000:.0f} ms; with journal + panel "
          f"{m * 1000:.0f} ms = {m / g:.2f}x (target <= 1.25x), CPU {mc / gc:.2f}x; without either "
          f"{p * 1000:.0f} ms = {p / g:.2f}x, CPU {pc / gc:.2f}x")
    print(f"   the same gather over the SDK's aiohttp client (the transport the model uses) {a * 1000:.0f} ms: the map "
          f"with journal + panel {m / a:.2f}x it, CPU {mc / ac:.2f}x")
    ms = {k: statistics.median(v) * 1000 for k, v in stalls.items()}
    print(f"   longest event-loop stall (median of runs): during the map with a journal {ms['map']:.1f} ms "
          f"(target < 20 ms{collected(collections['map'])}), without journal and panel {ms['plain']:.1f} ms"
          f"{collected(collections['plain'])}, during the hand-written gather {ms['gather']:.1f} ms (starting 100 "
          f"requests at once); the journal's calls on the loop: mean {ms['mean record'] * 1000:.0f} us, longest "
          f"{ms['record']:.1f} ms (a thread preempted on a busy machine included); {statistics.median(waited):.0%} of "
          f"the map's turns (a request's start, an answer's reading) waited for a later loop iteration "
          f"({share.budget * 1000:g} ms of them per iteration)")


def collected(durations: list[float]) -> str:
    """What full garbage collections took during the runs: they stop the process for its whole heap, whoever caused
    them, and land in one measurement or another."""
    if not durations:
        return "; no full garbage collection ran during them"
    return (f"; {len(durations)} full garbage collection(s) of this process's heap ran during them, "
            f"{min(durations) * 1000:.0f}-{max(durations) * 1000:.0f} ms each")


async def rate_limited_1000(latency: float, raw: bool) -> None:
    n, cap = 1000, 20
    ideal = n / cap * latency
    with FastServer(latency=latency, limit=cap, retry_after=0.1) as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-bench")  # the SDK's own 2 retries

        async def one(i: int) -> str:
            c = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"r{i}"}])
            return c.choices[0].message.content or ""

        await one(0)
        print(f"2. {n} items, server limit {cap} in flight (429 + Retry-After 0.1 s beyond), {latency * 1000:.0f} ms: "
              f"limit-bound ideal {ideal:.2f} s")
        if raw:
            server.reset()
            t = time.perf_counter()
            tasks = [asyncio.ensure_future(one(i)) for i in range(n)]
            done, pending = await asyncio.wait(tasks, timeout=RAW_CAP)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raw_time = time.perf_counter() - t
            raw_failed = sum(task.exception() is not None for task in done)
            print(f"   raw gather (the SDK's retries): {raw_failed} of {n} items failed and {len(pending)} unfinished "
                  f"after {raw_time:.0f} s (stopped at {RAW_CAP:.0f} s), {server.stats()['rate_limited']} 429s")
            del tasks, done, pending  # their exceptions hold tracebacks: garbage the runs below would collect
            await asyncio.sleep(0.5)

        bound = asyncio.Semaphore(cap)

        async def bounded(i: int) -> str:
            async with bound:
                return await one(i)

        server.reset()
        gc.collect()
        c0, t = time.process_time(), time.perf_counter()
        fixed = await asyncio.gather(*(bounded(i) for i in range(n)), return_exceptions=True)
        fixed_time, fixed_cpu = time.perf_counter() - t, time.process_time() - c0
        fixed_failed = sum(isinstance(r, BaseException) for r in fixed)
        bound_by = "this client's CPU" if fixed_cpu > 0.8 * ideal else "the server's limit"
        print(f"   gather bounded by exactly {cap} over create() (what a careful user writes): {fixed_time:.2f} s = "
              f"{fixed_time / ideal:.2f}x ideal, {fixed_failed} failed; CPU {fixed_cpu:.2f} s "
              f"({fixed_cpu / n * 1000:.1f} ms a request: {bound_by} is the bound)")
        aio_client = aiohttp_client(server.base_url)

        async def aio_bounded(i: int) -> str:
            async with bound:
                c = await aio_client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"r{i}"}])
                return c.choices[0].message.content or ""

        await aio_bounded(0)
        server.reset()
        gc.collect()
        c0, t = time.process_time(), time.perf_counter()
        aio = await asyncio.gather(*(aio_bounded(i) for i in range(n)), return_exceptions=True)
        aio_time, aio_cpu = time.perf_counter() - t, time.process_time() - c0
        await aio_client.close()
        print(f"   the same over the SDK's aiohttp client (the transport the model uses): {aio_time:.2f} s = "
              f"{aio_time / ideal:.2f}x ideal, {sum(isinstance(r, BaseException) for r in aio)} failed; CPU "
              f"{aio_cpu / n * 1000:.1f} ms a request")
        # Interleaved: a first map (nothing learned about this endpoint), then a later one (the learned window).
        runs: dict[str, list[tuple[float, float, int, int, float, str]]] = {"first": [], "later": []}
        for _ in range(REPEATS):
            for label in runs:
                agent = ChatAgent(model=OpenAIModel("m", base_url=server.base_url, api_key="sk-bench"))
                if label == "first":
                    forget_learned(endpoint_key(agent.model))
                server.reset()
                gc.collect()  # each run starts without the garbage of the last one
                with GcClock() as collections:
                    c0, t = time.process_time(), time.perf_counter()
                    result = await agent.map_async([f"r{i}" for i in range(n)])
                    map_time, map_cpu = time.perf_counter() - t, time.process_time() - c0
                runs[label].append((map_time, map_cpu, len(result.errors), server.stats()["rate_limited"],
                                    collections.seconds, repr(agent.limiter())))
        for label, description in (("first", "first map on this endpoint"), ("later", "a later map (learned window)")):
            times = [r[0] / ideal for r in runs[label]]
            cpu = statistics.median(r[1] for r in runs[label])
            print(f"   map_async auto, {description}: {statistics.median(times):.2f}x ideal "
                  f"({min(times):.2f}-{max(times):.2f}x in {len(times)} runs; target <= 1.3x), "
                  f"{statistics.median(r[0] for r in runs[label]) / fixed_time:.2f}x the bounded gather, "
                  f"CPU {cpu / n * 1000:.1f} ms an item (this process's CPU alone is {cpu / ideal:.2f}x the ideal: "
                  f"the floor on one loop; garbage collection "
                  f"{statistics.median(r[4] for r in runs[label]) * 1000:.0f} ms of it), "
                  f"failed items {', '.join(str(r[2]) for r in runs[label])}, "
                  f"{min(r[3] for r in runs[label])}-{max(r[3] for r in runs[label])} 429s; last: {runs[label][-1][5]}")
        await client.close()


async def wide_1000() -> None:
    """1,000 one-call items at 1 s latency, no server limit: ~300 requests in flight at once. httpx's pool does
    O(connections) work per request; the model spreads requests over one client per 32 in flight."""
    n = 1000
    with FastServer(latency=1.0) as server:
        # The SDK's own retries: 1,000 connections at once through one client can time out (seen once).
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-bench",
                                    http_client=openai.DefaultAsyncHttpxClient(trust_env=False))

        async def one(i: int) -> str:
            c = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"w{i}"}])
            return c.choices[0].message.content or ""

        await one(0)
        agent = ChatAgent(model=OpenAIModel("m", base_url=server.base_url, api_key="sk-bench"))
        await agent.map_async(["w"])
        wall: dict[str, list[float]] = {"gather": [], "map": []}
        cpu: dict[str, list[float]] = {"gather": [], "map": []}
        peak = failed = 0
        for run in range(max(REPEATS // 2, 2)):
            w, c, answers = await measure(asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True))
            failed += sum(isinstance(a, BaseException) for a in answers)
            wall["gather"].append(w)
            cpu["gather"].append(c)
            server.reset()
            w, c, result = await measure(agent.map_async([f"r{run} {i}" for i in range(n)]))
            assert not result.errors
            peak = max(peak, server.stats()["peak_in_flight"])
            wall["map"].append(w)
            cpu["map"].append(c)
        await client.close()
    g, m = statistics.median(wall["gather"]), statistics.median(wall["map"])
    gc, mc = statistics.median(cpu["gather"]), statistics.median(cpu["map"])
    print(f"2b. {n} one-call items at 1 s latency, no server limit (peak {peak} in flight): gather over create() "
          f"{g:.2f} s (CPU {gc / n * 1000:.1f} ms a request, {failed} failed), map_async {m:.2f} s = {m / g:.2f}x "
          f"(CPU {mc / n * 1000:.1f} ms an item, {agent.model.open_clients} HTTP clients)")


async def with_panel(n: int, server: FastServer) -> tuple[float, float, int]:
    panel = attached_panel("bench")
    agent = ChatAgent(model=OpenAIModel("m", base_url=server.base_url, api_key="sk-bench"))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    result = await agent.map_async([f"p{i}" for i in range(n)], on_event=panel.handle)
    elapsed = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert not result.errors and panel.model.done == n
    flushes = panel.flushes
    panel.finish()
    return elapsed, (after - before) / 1024, flushes


async def ten_thousand() -> None:
    with FastServer() as server:
        small, small_rss, _ = await with_panel(1000, server)
        big, big_rss, flushes = await with_panel(10_000, server)
    print(f"3. with the map panel attached: 1,000 items {small:.2f} s ({small / 1000 * 1e3:.2f} ms/item), "
          f"10,000 items {big:.2f} s ({big / 10_000 * 1e3:.2f} ms/item): time ratio {big / small:.1f}x for 10x "
          f"items (linear = 10x); peak RSS growth {small_rss:.1f} MB vs {big_rss:.1f} MB; {flushes} flushes")


async def main() -> None:
    print(f"medians of {REPEATS} interleaved runs")
    if "--rate-only" not in sys.argv:
        for latency in (0.0, LATENCY):
            await map_of_100(latency)
    await rate_limited_1000(LATENCY, raw=True)
    await rate_limited_1000(SLOW_LATENCY, raw=False)
    await wide_1000()
    if "--quick" not in sys.argv:
        await ten_thousand()


if __name__ == "__main__":
    asyncio.run(main())
