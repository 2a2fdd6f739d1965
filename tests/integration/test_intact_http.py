"""What people write reaches its reader intact, over real HTTP to the scripted server: tool parameters named
like pydantic's members, and DataFrame rows with gaps in a map."""

from __future__ import annotations

from typing import Any

import pytest

from menglong_magic import ChatAgent, tool
from menglong_magic import events as ev
from menglong_magic.maps.run import MapItemError
from menglong_magic.models import OpenAIModel, RetryPolicy
from menglong_magic.testing import ScriptedOpenAIServer, call_tools, echo_responder, reply, tool_call

FAST_RETRY = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.1)


def make_agent(server: ScriptedOpenAIServer, **kw: Any) -> ChatAgent:
    return ChatAgent(model=OpenAIModel("m", base_url=server.base_url, api_key="sk-intact", retry=FAST_RETRY), **kw)


def last_user(body: dict[str, Any]) -> str:
    return [m for m in body["messages"] if m["role"] == "user"][-1]["content"]


async def test_reserved_parameter_names_over_http(openai_server: ScriptedOpenAIServer) -> None:
    received: list[dict[str, Any]] = []

    @tool
    def lookup(query: str, model_extra: str, model_config: str = "default", model_fields_set: list[str] | None = None,
               größe: int = 1) -> str:
        """Look something up."""
        received.append({"query": query, "model_extra": model_extra, "model_config": model_config,
                         "model_fields_set": model_fields_set, "größe": größe})
        return "found"

    arguments = {"query": "tokyo", "model_extra": "gpt-x", "model_config": "fast", "model_fields_set": ["b", "a"],
                 "größe": 3}
    openai_server.enqueue(call_tools(tool_call("lookup", arguments)), reply("done"))
    result = await make_agent(openai_server, mode="auto", tools=[lookup]).arun("look up")
    assert result.final_output == "done" and received == [arguments]
    sent = openai_server.requests[0]["tools"][0]["function"]["parameters"]
    assert list(sent["properties"]) == ["query", "model_extra", "model_config", "model_fields_set", "größe"]
    assert sent["required"] == ["query", "model_extra"]
    tool_message = next(m for m in openai_server.requests[1]["messages"] if m["role"] == "tool")
    assert tool_message["content"] == "found"


async def test_map_over_rows_with_gaps_sends_empty_fields(openai_server: ScriptedOpenAIServer) -> None:
    pd = pytest.importorskip("pandas")
    np = pytest.importorskip("numpy")
    openai_server.responder = echo_responder()
    reviews = pd.DataFrame({
        "author": pd.Series(["ann", None, "cy"], dtype="object"),
        "date": pd.to_datetime(["2024-01-02", None, "2024-05-06"]),
        "stars": [4.0, np.nan, 2.0],
        "count": pd.array([3, None, 1], dtype="Int64"),
        "kind": pd.Categorical(["book", None, "film"]),
        "text": pd.array(["good", "meh", pd.NA], dtype="string"),
    })
    template = "Review by {author} on {date} ({stars} stars, {count} votes, {kind}): {text}"
    result = await make_agent(openai_server).map_async(reviews, template)
    assert result.errors == {}
    arrived = sorted(last_user(body) for body in openai_server.requests)
    assert arrived == sorted([
        "Review by ann on 2024-01-02 00:00:00 (4.0 stars, 3 votes, book): good",
        "Review by  on  ( stars,  votes, ): meh",
        "Review by cy on 2024-05-06 00:00:00 (2.0 stars, 1 votes, film): ",
    ])
    for text in arrived:
        assert not any(token in text for token in ("nan", "NaT", "<NA>", "None")), text


async def test_a_format_spec_over_nat_fails_only_that_item(openai_server: ScriptedOpenAIServer) -> None:
    pd = pytest.importorskip("pandas")
    openai_server.responder = echo_responder()
    frame = pd.DataFrame({"date": pd.to_datetime(["2024-01-02", None, "2024-03-04"]), "text": ["a", "b", "c"]})
    events: list[ev.Event] = []
    result = await make_agent(openai_server).map_async(frame, "{date:%Y-%m-%d}: {text}", on_event=events.append)
    assert sorted(last_user(body) for body in openai_server.requests) == ["2024-01-02: a", "2024-03-04: c"]
    assert list(result.errors) == [1] and isinstance(result[1], MapItemError)
    assert result[1].stop_reason == "prompt_format" and "'date' is missing (NaT)" in str(result[1])
    assert result.ok == 2 and result.requested == 2
    finished = {e.index: e.status for e in events if isinstance(e, ev.BatchItemFinished)}
    assert finished == {0: "ok", 1: "error", 2: "ok"}
    table = result.to_pandas()
    assert table["error"].notna().tolist() == [False, True, False]
    with pytest.raises(MapItemError, match="item 1"):
        await make_agent(openai_server).map_async(frame, "{date:%Y-%m-%d}: {text}", return_exceptions=False)


async def test_text_view_of_a_real_run_escapes_tool_and_model_control_sequences(
        openai_server: ScriptedOpenAIServer) -> None:
    import io

    from menglong_magic.ui.textview import TextView

    @tool
    def fetch_page(url: str) -> str:
        """Fetch a page."""
        return "page\x1b[1A\x1b[K\x1b[2J\x1b]52;c;cm0gLXJmIH4=\x07 end"

    answer = "Read \x1b]8;;https://evil.example\x1b\\the docs\x1b]8;;\x1b\\ now\x1b[2J."
    for streamed in (True, False):
        openai_server.enqueue(call_tools(tool_call("fetch_page", {"url": "x\x1b[2Jy"})), reply(answer))
        out = io.StringIO()
        view = TextView("t", stream=out)
        agent = make_agent(openai_server, mode="auto", tools=[fetch_page], stream=streamed)
        result = await agent.arun("read", on_event=view.handle)
        view.finish()
        assert bool(openai_server.requests[-1].get("stream")) is streamed
        assert result.final_output == answer  # the answer itself is kept as the model wrote it
        written = out.getvalue()
        assert "\x1b" not in written and "\x07" not in written
        assert "page\\x1b[1A\\x1b[K\\x1b[2J\\x1b]52;c;cm0gLXJmIH4=\\x07 end" in written
        assert "Read \\x1b]8;;https://evil.example\\x1b\\the docs" in written
