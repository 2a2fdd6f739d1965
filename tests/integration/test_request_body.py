"""OpenAIModel sends through the SDK client's ``post`` (skipping create()'s per-request params transform, a
quarter of the SDK's CPU): what reaches the server must be exactly what ``chat.completions.create`` sends.

Each case makes the same request twice against the scripted server, once through the model and once through
``AsyncOpenAI.chat.completions.create`` by hand, and compares the JSON bodies, the path with its query, and the
headers that carry meaning. Real openai client, real HTTP.
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.parse
from typing import Any

import openai
import pytest

from menglong_magic.models import AzureOpenAIModel, ModelError, OpenAIModel
from menglong_magic.models.base import ModelRequest
from menglong_magic.testing import echo_responder, fault, reply
from menglong_magic.testing.server import ScriptedOpenAIServer

KEY = "sk-request-body-0123456789"
TOOL = {"type": "function", "function": {"name": "lookup", "description": "Look a key up.",
                                         "parameters": {"type": "object", "properties": {"key": {"type": "string"}},
                                                        "required": ["key"]}}}
TOOL_ROUND = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is x? 🌍 naïve \u200b"},
    {"role": "assistant", "content": None,
     "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"key": "x"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "value of x"},
]
SCHEMA = {"type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": {
    "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": False}}}

# (messages, tools, settings) — settings are what a user passes as model settings / run settings.
CASES: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]] = {
    "plain": ([{"role": "user", "content": "hi"}], [], {}),
    "tools and choice": ([{"role": "user", "content": "look x up"}], [TOOL],
                         {"tool_choice": {"type": "function", "function": {"name": "lookup"}},
                          "parallel_tool_calls": False}),
    "tool round": (TOOL_ROUND, [TOOL], {"temperature": 0.2, "seed": 7, "max_tokens": 50, "stop": ["\n\n"]}),
    "response format": ([{"role": "user", "content": "a?"}], [],
                        {"response_format": SCHEMA, "user": "u1", "logit_bias": {"5": -100}}),
    "extras": ([{"role": "user", "content": "hi"}], [],
               {"extra_body": {"top_k": 5, "repetition_penalty": 1.1}, "extra_headers": {"X-Trace-Id": "t-1"},
                "extra_query": {"tenant": "a b"}}),
}


def recorded(server: ScriptedOpenAIServer, index: int) -> tuple[dict[str, Any], str, dict[str, str]]:
    headers = {k.lower(): v for k, v in server.request_headers[index].items()}
    meaningful = {k: headers.get(k) for k in ("content-type", "x-trace-id", "authorization", "accept")}
    return server.requests[index], server.request_paths[index], meaningful


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("case", list(CASES))
async def test_the_model_sends_what_create_sends(case: str, stream: bool) -> None:
    messages, tools, settings = CASES[case]
    with ScriptedOpenAIServer() as server:
        server.enqueue(reply("ok"), reply("ok"))
        model = OpenAIModel("m", base_url=server.base_url, api_key=KEY, stream_usage=True)
        response = await model.request(ModelRequest(messages=messages, tools=tools, settings=settings, stream=stream),
                                       lambda event: None)
        assert response.text == "ok"
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key=KEY, max_retries=0,
                                    http_client=openai.DefaultAsyncHttpxClient(trust_env=False))
        kwargs: dict[str, Any] = {"model": "m", "messages": messages, **settings}
        if tools:
            kwargs["tools"] = tools
        if stream:
            kwargs.update(stream=True, stream_options={"include_usage": True})
            async with await client.chat.completions.create(**kwargs) as chunks:
                async for _ in chunks:
                    pass
        else:
            await client.chat.completions.create(**kwargs)
        await client.close()
        await model.aclose()
        ours, by_hand = recorded(server, 0), recorded(server, 1)
    assert ours[0] == by_hand[0]  # the JSON body, key for key (extra_body merged in, as create() does)
    assert ours[1] == by_hand[1]  # the path and the query string
    assert ours[2] == by_hand[2]  # content type, extra headers, the Bearer key (redacted by the server)
    assert ours[2]["authorization"] == "<redacted>" and server.authorization_schemes == ["Bearer", "Bearer"]
    if case == "extras":
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(ours[1]).query)
        assert ours[0]["top_k"] == 5 and "extra_body" not in ours[0] and query == {"tenant": ["a b"]}


async def test_azure_deployment_path_and_key_header_are_the_sdks() -> None:
    with ScriptedOpenAIServer() as server:
        server.enqueue(reply("ok"), reply("ok"))
        model = AzureOpenAIModel("dep-1", azure_endpoint=server.base_url.removesuffix("/v1"), api_key=KEY,
                                 api_version="2024-10-21")
        await model.request(ModelRequest(messages=[{"role": "user", "content": "hi"}]), lambda event: None)
        client = openai.AsyncAzureOpenAI(azure_endpoint=server.base_url.removesuffix("/v1"), api_key=KEY,
                                         api_version="2024-10-21", max_retries=0)
        await client.chat.completions.create(model="dep-1", messages=[{"role": "user", "content": "hi"}])
        await client.close()
        await model.aclose()
        assert server.request_paths[0] == server.request_paths[1]
        assert server.request_paths[0].startswith("/openai/deployments/dep-1/chat/completions?api-version=")
        assert server.requests[0] == server.requests[1]
        ours, by_hand = ({k.lower(): v for k, v in server.request_headers[i].items()} for i in (0, 1))
        assert ours.get("api-key") == by_hand.get("api-key") == KEY  # Azure's header, as the SDK sends it
        assert ("authorization" in ours) == ("authorization" in by_hand)


@pytest.mark.parametrize("suffix", ["", "/"], ids=["no slash", "trailing slash"])
async def test_servers_other_than_openai_get_no_sdk_telemetry_headers(suffix: str) -> None:
    """The SDK's X-Stainless-* headers (its version, the client's OS, CPU, Python, retry count and read timeout)
    are for OpenAI's API; elsewhere they are omitted. A header the user sets, by default or per request, is sent
    as set, and the path is the one create() uses, with or without the base URL's trailing slash."""
    with ScriptedOpenAIServer() as server:
        server.enqueue(reply("ok"), reply("ok"), reply("ok"))
        model = OpenAIModel("m", base_url=server.base_url + suffix, api_key=KEY,
                            default_headers={"X-Stainless-OS": "plan9", "X-Team": "blue"})
        assert not model.sends_sdk_telemetry
        request = ModelRequest(messages=[{"role": "user", "content": "hi"}])
        await model.request(request, lambda event: None)
        await model.request(ModelRequest(messages=request.messages, stream=True,
                                         settings={"extra_headers": {"X-Stainless-Retry-Count": "9", "X-Trace": "t"}}),
                            lambda event: None)
        await model.aclose()
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)
        await client.chat.completions.create(model="m", messages=request.messages)
        await client.close()
    sent = [{k.lower(): v for k, v in headers.items()} for headers in server.request_headers]
    assert {k for k in sent[2] if k.startswith("x-stainless-")} >= {"x-stainless-os", "x-stainless-retry-count"}
    assert {k: v for k, v in sent[0].items() if k.startswith("x-stainless-")} == {"x-stainless-os": "plan9"}
    assert {k: v for k, v in sent[1].items() if k.startswith("x-stainless-")} == {
        "x-stainless-os": "plan9", "x-stainless-retry-count": "9"}
    assert sent[0]["x-team"] == sent[1]["x-team"] == "blue" and sent[1]["x-trace"] == "t"
    assert server.request_paths[0] == server.request_paths[1] == server.request_paths[2] == "/v1/chat/completions"


@pytest.mark.parametrize(("base_url", "telemetry"), [
    (None, True), ("https://api.openai.com/v1", True), ("https://eu.api.openai.com/v1/", True),
    ("http://127.0.0.1:8080/v1", False), ("https://openrouter.ai/api/v1", False),
    ("https://openai.com.example.net/v1", False),
])
def test_telemetry_is_kept_for_openai_hosts_only(base_url: str | None, telemetry: bool,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    model = OpenAIModel("m", base_url=base_url, api_key=KEY)
    assert model.sends_sdk_telemetry is telemetry
    omitted = [k for k, v in model._client_options().get("default_headers", {}).items() if isinstance(v, openai.Omit)]
    url, options = model._route
    assert bool(omitted) is not telemetry and ("headers" in options) is not telemetry
    assert url == (base_url or "https://api.openai.com/v1").rstrip("/") + "/chat/completions"
    azure = AzureOpenAIModel("dep", azure_endpoint="https://r.openai.azure.com", api_key=KEY)
    assert azure.sends_sdk_telemetry and azure._route[0] == "/chat/completions"  # the SDK adds the deployment


async def test_a_parameter_the_server_refuses_is_a_clean_model_error() -> None:
    """A key create() would not know (a typo, another provider's parameter) reaches the server; its 400 is the
    usual ModelError, not a TypeError from deep inside the SDK."""
    def strict(body: dict[str, Any]) -> Any:  # as OpenAI answers an unknown body key
        unknown = sorted(set(body) - {"model", "messages", "tools", "temperature"})
        return fault(400, message=f"Unrecognized request argument supplied: {unknown[0]}") if unknown else reply("ok")

    with ScriptedOpenAIServer(responder=strict) as server:
        model = OpenAIModel("m", base_url=server.base_url, api_key=KEY, settings={"temprature": 0.2})
        with pytest.raises(ModelError) as caught:
            await model.request(ModelRequest(messages=[{"role": "user", "content": "hi"}]), lambda event: None)
        await model.aclose()
        assert len(server.requests) == 1  # a 400 is not retried
    assert caught.value.status == 400 and "temprature" in str(caught.value)
    assert KEY not in str(caught.value)


async def test_every_client_shares_one_tls_context_per_ca_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each HTTP client used to build its own TLS context (the whole CA bundle, 30-80 ms on the loop for each new
    model or loop); now one per process and CA setting. Requests still work through the shared one."""
    import importlib

    from menglong_magic.models import openai_compat

    roots = [base.__module__.partition(".")[0] for base in openai.DefaultAsyncHttpxClient.__mro__]
    library = importlib.import_module(next(root for root in roots if root.startswith("httpx")))
    made: list[bool] = []
    real = library.create_ssl_context

    def counting(*args: Any, **kwargs: Any) -> Any:
        verify = kwargs.get("verify", args[0] if args else True)
        if not isinstance(verify, ssl.SSLContext):  # a context passed in is returned as it is, not made
            made.append(kwargs.get("trust_env", True))
        return real(*args, **kwargs)

    monkeypatch.setattr(library, "create_ssl_context", counting)
    openai_compat._ssl_context.cache_clear()
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with ScriptedOpenAIServer() as server:
        server.enqueue(reply("a"), reply("b"))
        local = [OpenAIModel("m", base_url=server.base_url, api_key=KEY) for _ in range(3)]
        remote = [OpenAIModel("m", base_url="https://api.example.invalid/v1", api_key=KEY) for _ in range(3)]
        for model in local + remote:
            assert model.client is not None  # each model's own client, for this loop
        assert made == [False, True]  # one context for local servers (no proxies), one for the rest
        texts = [(await m.request(ModelRequest(messages=[{"role": "user", "content": "hi"}]), lambda e: None)).text
                 for m in local[:2]]
        assert texts == ["a", "b"]
        import certifi

        monkeypatch.setenv("SSL_CERT_FILE", certifi.where())  # another CA setting: its own context
        other = OpenAIModel("m", base_url="https://api.example.invalid/v1", api_key=KEY)
        assert other.client is not None
        for model in [*local, *remote, other]:
            await model.aclose()
    assert made[:2] == [False, True] and len(made) == 3
    openai_compat._ssl_context.cache_clear()


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_an_sdk_object_in_the_history_is_sent_as_create_would(stream: bool) -> None:
    """A ChatCompletionMessage (what create() returns) put into the messages by hand: create()'s transform
    turns it into JSON, and so does our path (new SDKs encode it in post(); older ones fall back to create())."""
    from openai.types.chat import ChatCompletionMessage

    messages: list[Any] = [{"role": "user", "content": "a"},
                           ChatCompletionMessage(role="assistant", content="hi there"),
                           {"role": "user", "content": "b"}]
    with ScriptedOpenAIServer() as server:
        server.enqueue(reply("ok"), reply("ok"))
        model = OpenAIModel("m", base_url=server.base_url, api_key=KEY)
        response = await model.request(ModelRequest(messages=messages, stream=stream), lambda event: None)
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key=KEY, max_retries=0,
                                    http_client=openai.DefaultAsyncHttpxClient(trust_env=False))
        streamed = {"stream": True, "stream_options": {"include_usage": True}} if stream else {}
        made = await client.chat.completions.create(model="m", messages=messages, **streamed)
        if stream:
            async for _ in made:
                pass
        await client.close()
        await model.aclose()
    assert response.text == "ok" and response.usage is not None and len(server.requests) == 2
    assert server.requests[0] == server.requests[1]
    assert server.requests[0]["messages"][1] == {"role": "assistant", "content": "hi there"}


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_concurrent_requests_spread_over_clients_and_all_are_closed(stream: bool, library: str) -> None:
    """httpx's pool does O(connections) work per request: past CLIENT_SHARE concurrent requests a model opens
    another client beside the first (100 at once: 4 clients); aiohttp's pool does not (one client). One request
    at a time never opens another; aclose() closes every one. Each request is answered, whichever client
    carried it."""
    from menglong_magic.models.openai_compat import CLIENT_SHARE

    # The 100 wait 2 s: long enough for all to be sent before the first is answered, on a busy machine and an old
    # SDK too; the requests one at a time are answered at once.
    slow, fast = echo_responder(delay=2.0), echo_responder()

    def respond(body: dict[str, Any]) -> Any:
        return (slow if str(body["messages"][-1]["content"]).startswith("item") else fast)(body)

    with ScriptedOpenAIServer(responder=respond) as server:
        model = OpenAIModel("m", base_url=server.base_url, api_key=KEY, http_library=library)  # type: ignore[arg-type]
        for i in range(3):  # one at a time
            await model.request(ModelRequest(messages=[{"role": "user", "content": f"one {i}"}], stream=stream),
                                lambda event: None)
        assert model.open_clients == 1
        texts = [f"item {i}" for i in range(100)]
        responses = await asyncio.gather(*(
            model.request(ModelRequest(messages=[{"role": "user", "content": t}], stream=stream), lambda event: None)
            for t in texts))
        assert [r.text for r in responses] == [f"echo: {t}" for t in texts]
        assert server.max_in_flight == 100  # nothing was held back to spread them
        assert model.open_clients == -(-100 // CLIENT_SHARE[library]) == (4 if library == "httpx" else 1)
        clients = list(model._clients.get().clients)
        await model.aclose()
        assert all(c.is_closed() for c in clients)
