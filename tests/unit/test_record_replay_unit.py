"""Recorder and Replay without a server: chunk capture, retries, file handling, diffs, format errors."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import pathlib
from typing import Any

import pytest

from menglong_magic import ChatAgent
from menglong_magic import events as ev
from menglong_magic.models import (
    Model,
    ModelRequest,
    ModelResponse,
    Recorder,
    Replay,
    ReplayExhausted,
    ReplayMismatch,
    ScriptedModel,
    ToolCall,
)
from menglong_magic.models.record import CassetteFormatError, first_difference, load_cassette
from menglong_magic.usage import Usage

ROOT = pathlib.Path(__file__).resolve().parents[2]


def request(text: str = "hi", *, stream: bool = False, **kw: Any) -> ModelRequest:
    return ModelRequest(messages=[{"role": "user", "content": text}], stream=stream, run_id="r1", iteration=1, **kw)


def lines(path: pathlib.Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


class FlakyStream(Model):
    """Streams a void attempt, reports a retry, then streams the real answer."""

    name = "flaky"

    async def request(self, request: ModelRequest, emit: Any) -> ModelResponse:
        emit(ev.TextDelta(request.run_id, iteration=request.iteration, delta="void "))
        emit(ev.Retry(request.run_id, attempt=1, delay=0.0, error="connection dropped"))
        for piece in ("real ", "answer"):
            emit(ev.TextDelta(request.run_id, iteration=request.iteration, delta=piece))
        emit(ev.ToolCallDelta(request.run_id, iteration=request.iteration, index=0, name="f", arguments_delta="{}"))
        return ModelResponse(text="real answer", tool_calls=[ToolCall("c1", "f", "{}")], usage=Usage(3, None),
                             model="flaky-1", finish_reason="tool_calls")


class Failing(Model):
    name = "failing"

    async def request(self, request: ModelRequest, emit: Any) -> ModelResponse:
        emit(ev.TextDelta(request.run_id, iteration=request.iteration, delta="partial"))
        raise RuntimeError("boom")


class KeyedModel(Model):
    """A model holding credentials whose server echoes them back (a hostile or buggy endpoint)."""

    name = "keyed"

    def __init__(self) -> None:
        self._api_key = "sk-echoed-KEY-123456789"
        self._default_headers = {"X-Token": "Bearer tok-echoed-987654321"}
        self.base_url = "http://alice:pw-echoed-5555@example.invalid/v1"

    async def request(self, request: ModelRequest, emit: Any) -> ModelResponse:
        text = f"key {self._api_key}, token tok-echoed-987654321, password pw-echoed-5555"
        emit(ev.TextDelta(request.run_id, iteration=request.iteration, delta=text))
        return ModelResponse(text=text, tool_calls=[ToolCall("c1", "f", json.dumps({"k": self._api_key}))])


async def test_retry_voids_the_chunks_streamed_before_it(tmp_path: pathlib.Path) -> None:
    seen: list[Any] = []
    recorder = Recorder(FlakyStream(), tmp_path / "c.jsonl")
    response = await recorder.request(request(stream=True), seen.append)
    assert response.text == "real answer"
    assert [type(e).__name__ for e in seen] == ["TextDelta", "Retry", "TextDelta", "TextDelta", "ToolCallDelta"]
    [pair] = lines(recorder.path)
    assert pair["chunks"] == [
        {"type": "text", "delta": "real "},
        {"type": "text", "delta": "answer"},
        {"type": "tool_call", "index": 0, "name": "f", "arguments_delta": "{}"},
    ]
    assert pair["response"]["usage"] == {"input_tokens": 3, "output_tokens": None}
    assert pair["model"] == "flaky" and pair["response"]["model"] == "flaky-1"

    replayed: list[Any] = []
    again = await Replay(recorder.path).request(request(stream=True), replayed.append)
    assert again == response
    assert [(type(e).__name__, getattr(e, "delta", None)) for e in replayed] == [
        ("TextDelta", "real "), ("TextDelta", "answer"), ("ToolCallDelta", None)]
    assert all(e.run_id == "r1" and e.iteration == 1 for e in replayed)


async def test_a_failed_request_writes_nothing(tmp_path: pathlib.Path) -> None:
    recorder = Recorder(Failing(), tmp_path / "c.jsonl")
    with pytest.raises(RuntimeError, match="boom"):
        await recorder.request(request(stream=True), lambda e: None)
    assert recorder.path.read_text() == "" and recorder.recorded == 0


async def test_append_by_default_new_cassette_with_mode_w(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "sub" / "c.jsonl"  # parent folders are created
    await Recorder(ScriptedModel(["one"]), path).request(request("a"), lambda e: None)
    await Recorder(ScriptedModel(["two"]), path).request(request("b"), lambda e: None)
    assert [p["response"]["text"] for p in lines(path)] == ["one", "two"]
    recorder = Recorder(ScriptedModel(["three"]), path, mode="w")
    assert path.read_text() == ""
    await recorder.request(request("c"), lambda e: None)
    assert [p["response"]["text"] for p in lines(path)] == ["three"]
    with pytest.raises(ValueError):
        Recorder(ScriptedModel(), path, mode="x")  # type: ignore[arg-type]


async def test_secrets_echoed_by_the_model_are_scrubbed(tmp_path: pathlib.Path) -> None:
    recorder = Recorder(KeyedModel(), tmp_path / "c.jsonl")
    await recorder.request(request(stream=True, settings={"extra_headers": {"X-Run": "run-header-SECRET"},
                                                          "api_key": "sk-in-settings-000000", "seed": 7}),
                           lambda e: None)
    data = recorder.path.read_text(encoding="utf-8")
    for secret in ("sk-echoed-KEY-123456789", "tok-echoed-987654321", "pw-echoed-5555", "run-header-SECRET",
                   "sk-in-settings-000000", "X-Run"):
        assert secret not in data
    [pair] = lines(recorder.path)
    assert pair["response"]["text"] == "key ***, token ***, password ***"
    assert pair["request"]["settings"] == {"seed": 7}
    assert "sk-echoed" not in repr(recorder)


async def test_recorder_is_the_wrapped_model_to_the_agent(tmp_path: pathlib.Path) -> None:
    scripted = ScriptedModel(["hello"], name="scripted-x")
    recorder = Recorder(scripted, tmp_path / "c.jsonl")
    assert recorder.name == "scripted-x" and recorder.unused == ["hello"]  # forwarded to the wrapped model
    assert recorder.model is scripted
    with pytest.raises(AttributeError):
        _ = recorder._private_thing
    assert Recorder("offline", tmp_path / "o.jsonl").name == "offline"
    agent = ChatAgent(model=recorder)
    assert await agent.chat_async("hi") == "hello"
    assert agent.last_result.model == "scripted-x"


async def test_a_non_streamed_recording_streams_as_one_fragment(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "c.jsonl"
    await Recorder(ScriptedModel(["plain answer"]), path).request(request(), lambda e: None)
    assert lines(path)[0]["chunks"] == []
    seen: list[Any] = []
    await Replay(path).request(request(stream=True), seen.append)
    assert [e.delta for e in seen] == ["plain answer"]
    quiet: list[Any] = []
    await Replay(path).request(request(stream=False), quiet.append)
    assert quiet == []


async def test_replayed_chunks_are_spread_over_loop_turns(tmp_path: pathlib.Path) -> None:
    """Each fragment is its own step on the loop, so a panel refreshing meanwhile sees the stream grow."""
    path = tmp_path / "c.jsonl"
    text = "one two three four five six"
    await Recorder(ScriptedModel([text], stream_chunk=4), path).request(request(stream=True), lambda e: None)
    ticks = 0
    stop = False

    async def ticker() -> None:
        nonlocal ticks
        while not stop:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.ensure_future(ticker())
    await asyncio.sleep(0)
    at_event: list[int] = []
    await Replay(path).request(request(stream=True), lambda e: at_event.append(ticks))
    stop = True
    await task
    assert len(at_event) == 7 and len(set(at_event)) == 7  # the ticker ran between every two fragments


async def test_strict_identical_requests_take_recorded_pairs_in_order(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "c.jsonl"
    recorder = Recorder(ScriptedModel(["first", "second", "other"]), path)
    for text in ("same", "same", "different"):
        await recorder.request(request(text), lambda e: None)
    replay = Replay(path)
    answers = [(await replay.request(request(t), lambda e: None)).text for t in ("different", "same", "same")]
    assert answers == ["other", "first", "second"]
    replay.assert_all_used()
    # Asked once more (a cell run again): the same question gets the first recorded answer again.
    assert (await replay.request(request("same"), lambda e: None)).text == "first"
    with pytest.raises(ReplayMismatch, match=r"messages\[0\]\.content: recorded 'same', got 'sane'"):
        await replay.request(request("sane"), lambda e: None)
    replay.reset()
    assert len(replay.unused) == 3


def test_first_difference_paths() -> None:
    a = {"messages": [{"role": "user", "content": "x"}, {"role": "tool", "content": "1"}], "tools": []}
    assert first_difference(a, json.loads(json.dumps(a))) is None
    b = json.loads(json.dumps(a))
    b["messages"][1]["content"] = "2"
    assert first_difference(a, b) == ("messages[1].content", "1", "2")
    b = json.loads(json.dumps(a))
    b["messages"].append({"role": "user", "content": "more"})
    where, recorded, got = first_difference(a, b)  # type: ignore[misc]
    assert where == "messages[2]" and repr(recorded) == "<missing>" and got["content"] == "more"
    b = json.loads(json.dumps(a))
    b["messages"][0]["name"] = "bob"
    assert first_difference(a, b)[0] == "messages[0].name"  # type: ignore[index]
    assert first_difference({"n": 1}, {"n": "1"}) == ("n", 1, "1")
    assert first_difference({"n": 1}, {"n": True}) == ("n", 1, True)


async def test_an_empty_cassette_answers_nothing(tmp_path: pathlib.Path) -> None:
    recorder = Recorder(ScriptedModel(), tmp_path / "empty.jsonl")  # a run that never asked the model
    for strict in (True, False):
        with pytest.raises(ReplayExhausted, match="0 recorded request"):
            await Replay(recorder.path, strict=strict).request(request(), lambda e: None)


def test_cassette_format_errors(tmp_path: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError, match="no cassette"):
        Replay(tmp_path / "none.jsonl")
    bad = tmp_path / "bad.jsonl"
    good = json.dumps({"v": 1, "model": "m", "request": {"messages": []}, "response": {"text": "t"}, "chunks": []})
    bad.write_text(good + "\n\n{not json\n")
    with pytest.raises(CassetteFormatError, match=r"bad\.jsonl line 3: not JSON"):
        load_cassette(bad)
    bad.write_text(good + "\n" + good.replace('"v": 1', '"v": 2') + "\n")
    with pytest.raises(CassetteFormatError, match="line 2: cassette format version 2"):
        load_cassette(bad)
    bad.write_text(json.dumps({"v": 1, "request": {}}) + "\n")
    with pytest.raises(CassetteFormatError, match="needs a 'request' and a 'response'"):
        load_cassette(bad)
    bad.write_text(good + "\n")
    assert len(load_cassette(bad)) == 1 and Replay(bad).recorded_model == "m"


async def test_the_committed_teaching_cassette_replays_strictly() -> None:
    """The cassette the notebooks use still matches the tool schema and task of its recording script."""
    root = ROOT
    spec = importlib.util.spec_from_file_location("record_cassette", root / "scripts" / "record_cassette.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    replay = Replay(root / "notebooks" / "cassettes" / "weather_local.jsonl")
    result, fragments = await script.run(replay, script.load_tools())
    assert result.stop_reason == "completed", result.error
    assert [c.name for it in result.iterations for c in it.tool_calls] == ["get_weather"]
    assert fragments and result.final_output == replay.pairs[-1]["response"]["text"]
    assert replay.recorded_model.startswith("local:")
    replay.assert_all_used()
