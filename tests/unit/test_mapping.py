"""Unit tests for the map's parts: prompt formatting, item keys, the journal, the AIMD limiter, the view model."""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path

import pytest

from menglong_magic import ChatAgent
from menglong_magic import events as ev
from menglong_magic.agent.limiter import (
    DEFAULT_MAXIMUM,
    AdaptiveLimiter,
    endpoint_key,
    forget_learned,
    learned_limit,
)
from menglong_magic.maps.run import Journal, MapItemsRestored, format_prompt, item_key, settings_fingerprint
from menglong_magic.models.base import current_gate
from menglong_magic.ui.mapview import MapTextView, MapViewModel
from menglong_magic.usage import RunUsage, Usage


def test_format_prompt() -> None:
    assert format_prompt(None, "plain") == "plain"
    assert format_prompt("Say {}", "hi") == "Say hi"
    assert format_prompt("Say {input}", 3) == "Say 3"
    assert format_prompt("Sentiment: {text}", "good", "text") == "Sentiment: good"
    assert format_prompt("{a}-{b}", {"a": 1, "b": "x"}) == "1-x"
    with pytest.raises(KeyError, match="'c'"):
        format_prompt("{c}", {"a": 1})
    with pytest.raises(ValueError, match="template"):
        format_prompt(None, {"a": 1})


def test_item_keys_change_with_what_determines_the_answer() -> None:
    agent = ChatAgent(model="offline", system="s1")
    base = settings_fingerprint(agent.settings())
    assert item_key(base, "p") == item_key(settings_fingerprint(agent.settings()), "p")
    assert item_key(base, "p") != item_key(base, "q")
    assert settings_fingerprint(agent.settings(system="s2")) != base
    assert settings_fingerprint(agent.settings(model_settings={"temperature": 0})) != base


def test_journal_keeps_answers_and_retries_errors(tmp_path: Path) -> None:
    usage = RunUsage([Usage(3, 4)])
    with Journal(tmp_path / "j.sqlite") as journal:
        journal.record("k1", 0, "p1", "answer", usage=usage)
        journal.record("k2", 1, "p2", error="boom")
        assert set(journal.answered(["k1", "k2", "k3"])) == {"k1"}
        journal.record("k1", 5, "p1", error="later failure")  # never replaces an answer
        journal.record("k2", 1, "p2", "fixed")  # an answer replaces an error
        found = journal.answered(["k1", "k2"])
        assert found["k1"][0] == "answer" and found["k2"][0] == "fixed"
        assert found["k1"][1].total_tokens == 7
        assert len(journal) == 2
    with Journal(tmp_path / "j.sqlite") as again:  # it survives reopening
        assert len(again) == 2 and [r["prompt"] for r in again.rows()] == ["p1", "p2"]


async def _hold(limiter: AdaptiveLimiter, count: int, release: asyncio.Event) -> list[asyncio.Task[None]]:
    """``count`` tasks that each take a slot and keep it until ``release`` is set."""
    async def holder() -> None:
        async with limiter:
            await release.wait()

    tasks = [asyncio.ensure_future(holder()) for _ in range(count)]
    for _ in range(5):
        await asyncio.sleep(0)
    return tasks


async def test_limiter_starts_wide_open() -> None:
    limiter = AdaptiveLimiter()
    assert limiter.limit == DEFAULT_MAXIMUM
    release = asyncio.Event()
    tasks = await _hold(limiter, 600, release)  # what a hand-written gather would send: all admitted at once
    assert limiter.in_flight == 600 and limiter.peak_in_flight == 600
    release.set()
    await asyncio.gather(*tasks)
    assert limiter.in_flight == 0 and limiter.decreases == 0


async def test_limiter_halves_on_429_and_never_goes_below_the_floor() -> None:
    limiter = AdaptiveLimiter(decrease=0.5)
    release = asyncio.Event()
    tasks = await _hold(limiter, 40, release)

    async def rejected(status: int | None, refused: bool = False) -> None:
        with pytest.raises(RuntimeError):
            async with limiter:
                assert current_gate.get() is limiter
                limiter.attempt_failed(status, None, refused=refused)
                raise RuntimeError("the request failed for good")

    await rejected(429)  # 41 in flight when the server said no
    assert limiter.limit == 20 and limiter.decreases == 1 and not limiter.slow_start
    release.set()
    await asyncio.gather(*tasks)  # 40 successes, 20 of them with the window full: + 1/window each
    assert limiter.limit == 21  # from 20.5
    await rejected(500)  # not a congestion signal
    await rejected(None)  # no HTTP answer (a timeout): not one either
    assert limiter.limit == 21 and limiter.congestion_signals == 1
    await rejected(503)  # 1 in flight
    assert limiter.limit == 1
    await rejected(None, refused=True)  # a refused connection is congestion too
    assert limiter.limit == 1 and limiter.congestion_signals == 3
    assert current_gate.get() is None
    for _ in range(4):  # one at a time: the window (1) is full only for the first, which grows it to 2
        async with limiter:
            pass
    assert limiter.limit == 2


async def test_limiter_with_an_explicit_start_grows_until_pushed_back() -> None:
    limiter = AdaptiveLimiter(initial=4, maximum=10)
    for _ in range(10):  # one at a time never fills the window: no reason to grow it
        async with limiter:
            pass
    assert limiter.limit == 4

    async def work() -> None:
        async with limiter:
            await asyncio.sleep(0.001)

    await asyncio.gather(*(work() for _ in range(40)))
    assert limiter.limit == 10 and limiter.slow_start  # +1 per success while full, up to the maximum


async def test_limiter_remembers_per_endpoint() -> None:
    forget_learned()
    first = AdaptiveLimiter(decrease=0.5, endpoint="http://a/v1 m")
    release = asyncio.Event()
    tasks = await _hold(first, 23, release)
    async with first:
        first.attempt_failed(429, None)  # 24 in flight: the window becomes 12
        assert first.limit == 12 and learned_limit("http://a/v1 m") == 12
    release.set()
    await asyncio.gather(*tasks)
    assert first.limit == 13  # 24 successes since: about two more round trips, +1 each
    later = AdaptiveLimiter(endpoint="http://a/v1 m")  # another loop, agent or batch: starts where it was
    assert later.limit == 13 and not later.slow_start
    assert AdaptiveLimiter(endpoint="http://a/v1 other-model").limit == DEFAULT_MAXIMUM
    assert AdaptiveLimiter(endpoint="http://b/v1 m").limit == DEFAULT_MAXIMUM
    assert AdaptiveLimiter(initial=3, endpoint="http://a/v1 m").limit == 3  # an explicit start wins
    late = AdaptiveLimiter()  # an agent whose default model is resolved after its limiter was made
    late.bind("http://a/v1 m")
    assert late.limit == 13 and late.endpoint == "http://a/v1 m"
    forget_learned("http://a/v1 m")
    assert AdaptiveLimiter(endpoint="http://a/v1 m").limit == DEFAULT_MAXIMUM


def test_agents_key_their_limiters_by_base_url_and_model() -> None:
    from menglong_magic.models import OpenAIModel

    a = endpoint_key(OpenAIModel("m1", base_url="http://127.0.0.1:9/v1", api_key="sk-x"))
    assert a == endpoint_key(OpenAIModel("m1", base_url="http://127.0.0.1:9/v1", api_key="sk-other"))
    assert a != endpoint_key(OpenAIModel("m2", base_url="http://127.0.0.1:9/v1", api_key="sk-x"))
    assert a != endpoint_key(OpenAIModel("m1", base_url="http://127.0.0.1:10/v1", api_key="sk-x"))
    assert "sk-" not in (a or "")


async def test_limiter_bounds_in_flight_and_gives_slots_back_while_waiting() -> None:
    limiter = AdaptiveLimiter(initial=2, maximum=2)
    peak = 0
    active = 0

    async def work(wait: bool) -> None:
        nonlocal peak, active
        async with limiter:
            active += 1
            peak = max(peak, active)
            if wait:
                active -= 1
                async with limiter.released():
                    await asyncio.sleep(0.02)
                active += 1
            await asyncio.sleep(0.01)
            active -= 1

    await asyncio.gather(*(work(i % 2 == 0) for i in range(8)))
    assert peak <= 2 and limiter.in_flight == 0 and limiter.peak_in_flight == 2


async def test_limiter_pauses_at_the_floor_for_retry_after() -> None:
    limiter = AdaptiveLimiter(initial=1, maximum=1)
    async with limiter:
        limiter.attempt_failed(429, 0.2)
    t = asyncio.get_running_loop().time()
    async with limiter:
        pass
    assert asyncio.get_running_loop().time() - t >= 0.15


def _events(batch: str = "b") -> list[ev.Event]:
    return [
        ev.BatchStarted(batch, messages=tuple(f"m{i}" for i in range(5)), mode="map"),
        MapItemsRestored(batch, count=2),
        ev.BatchItemStarted(batch, index=2, message="m2", item_run_id="b-2"),
        ev.BatchItemStarted(batch, index=3, message="m3", item_run_id="b-3"),
        ev.ModelResponseReceived("b-2", iteration=1, text="x", tool_calls=(), usage=Usage(10, 2), duration=0.1),
        ev.BatchItemFinished(batch, index=2, status="ok", duration=0.1, result="x", error=None),
        ev.BatchItemFinished(batch, index=3, status="error", duration=0.1, result=None, error="HTTP 400 <b>"),
    ]


def test_map_view_model_aggregates() -> None:
    model = MapViewModel("m")
    for event in _events():
        model.apply(event)
    assert (model.total, model.done, model.failed, model.restored, len(model.running)) == (5, 1, 1, 2, 0)
    assert model.completed == 4 and model.failures == [(3, "HTTP 400 <b>")]
    assert model.input_tokens == 10 and model.output_tokens == 2
    assert model.eta() is not None and model.rate() is not None
    assert "&lt;b&gt;" in model.final_html() and "<b>" not in model.rows_html()
    model.apply(ev.BatchFinished("b", ok=3, failed=1, duration=1.0))
    assert model.finished and model.status == "completed with errors"
    assert "4/5" in model.summary_line()


def test_map_view_model_cost_per_event_does_not_grow() -> None:
    model = MapViewModel("m", last_rows=3)
    model.apply(ev.BatchStarted("b", messages=("x",) * 10_000, mode="map"))
    for i in range(10_000):
        model.apply(ev.BatchItemFinished("b", index=i, status="ok", duration=0.0, result=f"r{i}", error=None))
    assert len(model.rows) == 3 and model.done == 10_000
    assert model.rows_html().count("<tr") == 3


def test_map_text_view_prints_failures_and_summary() -> None:
    out = io.StringIO()
    view = MapTextView("m", stream=out, interval=0.0)
    for event in _events():
        view.handle(event)
    view.finish()
    text = out.getvalue()
    assert "item 3 failed: HTTP 400 <b>" in text and "cancelled" in text.splitlines()[-1]


def test_map_panel_sends_new_failures_only_and_closes_its_widget() -> None:
    pytest.importorskip("anywidget")
    import ipywidgets

    from menglong_magic.ui.mapview import MapPanel

    panel = MapPanel(title="m")
    sent: list[dict[str, object]] = []
    panel.widget.send = lambda content, buffers=None: sent.append(content)
    for event in _events():
        panel.handle(event)  # no loop: each event flushes at once
    assert "3 ok" in panel.widget.stats and "2 of them from the journal" in panel.widget.stats
    assert panel.widget.progress["failed"] == 1
    assert [len(m["html"]) for m in sent] == [1]  # the one failure, sent once
    widget_id = panel.widget.model_id
    panel.finish()
    assert panel.widget is None and widget_id not in ipywidgets.Widget.widgets
    assert panel.final_bundle is not None and "HTTP 400 &lt;b&gt;" in panel.final_bundle["text/html"]


@pytest.mark.parametrize("finish_order", [[2, 0, 3, 1], [3, 2, 1, 0], [1, 3, 0, 2]])
def test_the_map_view_lists_items_in_input_order_whatever_order_they_finish_in(finish_order: list[int]) -> None:
    from menglong_magic import events as ev
    from menglong_magic.ui.mapview import MapViewModel

    view = MapViewModel("m")
    view.apply(ev.BatchStarted("b", messages=("a", "b", "c", "d")))
    for index in finish_order:
        view.apply(ev.BatchItemStarted("b", index=index, message="x", item_run_id=f"r{index}"))
    for index in finish_order:
        failed = index % 2 == 1
        view.apply(ev.BatchItemFinished("b", index=index, status="error" if failed else "ok", duration=0.1,
                                        result=None if failed else f"answer {index}",
                                        error=f"boom {index}" if failed else None))  # fmt: skip
    shown = [int(i) for i in re.findall(r"<td[^>]*>#(\d+)</td>", view.rows_html())]
    assert shown == [0, 1, 2, 3]
    assert [int(i) for i in re.findall(r"#(\d+): boom", view.final_html())] == [1, 3]
    assert [line.split()[0] for line in view.summary_text().splitlines()[1:]] == ["#1", "#3"]


def test_result_tables_are_left_aligned_and_full_width_in_a_saved_notebook() -> None:
    """JupyterLab right-aligns rendered table cells and stripes rows only as wide as their text; a saved notebook
    keeps no stylesheet, so the map's and the batch's tables carry their styles inline."""
    from menglong_magic.ui.html import batch_html
    from menglong_magic.ui.mapview import MapViewModel
    from menglong_magic.ui.state import RunViewModel

    events = [ev.BatchStarted("b", messages=("a", "b")),
              ev.BatchItemStarted("b", index=0, message="a", item_run_id="r0"),
              ev.BatchItemStarted("b", index=1, message="b", item_run_id="r1"),
              ev.BatchItemFinished("b", index=0, status="ok", duration=0.1, result="a long answer", error=None),
              ev.BatchItemFinished("b", index=1, status="error", duration=0.1, result=None, error="boom")]
    view, vm = MapViewModel("m"), RunViewModel()
    for event in events:
        view.apply(event)
        vm.apply(event)
    for html in (view.rows_html(), batch_html(vm)):
        cells = re.findall(r"<t[dh]( [^>]*)?>", html)
        assert len(cells) >= 6 and all("text-align:left" in cell for cell in cells), html
        assert re.search(r'<table [^>]*style="[^"]*width:100%', html), html


def test_map_eta_waits_until_the_map_is_up_to_speed() -> None:
    """The first answers all come after one round trip: an ETA from 2 of 500 read "1m15s" for a 3 s map."""
    model = MapViewModel("m")
    model.apply(ev.BatchStarted("b", messages=tuple(f"m{i}" for i in range(500)), mode="map"))

    def finish(count: int) -> None:
        for index in range(model.done, model.done + count):
            model.apply(ev.BatchItemFinished("b", index=index, status="ok", duration=0.05, result="x", error=None))

    finish(2)
    assert model.eta() is None and "ETA –" in model.summary_line()
    finish(22)  # 24 of 500: still under 5%
    assert model.eta() is None
    finish(1)
    assert model.eta() is not None and "ETA –" not in model.summary_line()
    small = MapViewModel("s")
    small.apply(ev.BatchStarted("c", messages=("a", "b", "c"), mode="map"))
    small.apply(ev.BatchItemFinished("c", index=0, status="ok", duration=0.05, result="x", error=None))
    assert small.eta() is None
    small.apply(ev.BatchItemFinished("c", index=1, status="error", duration=0.05, result=None, error="boom"))
    assert small.eta() is not None  # two of three (failures count: they are finished)


def test_map_final_view_has_a_title_and_badge_and_says_the_title_once() -> None:
    """The final view showed only the figures and rows; the live panel said its title twice ("bot map",
    then "[bot map] running: …")."""
    model = MapViewModel("bot <map>")
    for event in _events():
        model.apply(event)
    assert "[bot" not in model.stats_html() and '<div class="mm-map-stats">running: 4/5' in model.stats_html()
    model.apply(ev.BatchFinished("b", ok=3, failed=1, duration=1.0))
    html = model.final_html()
    assert "<b>bot &lt;map&gt;</b>" in html and ">completed with errors</span>" in html and "#9a6700" in html
    assert html.count("bot &lt;map&gt;") == 1  # the stats line under it does not repeat it, nor the status
    assert '<div class="mm-map-stats">4/5, 3 ok, 1 failed' in html and html.count("completed with errors") == 1
    assert model.summary_line().startswith("[bot <map>] completed with errors: 4/5")  # text lines keep it
