"""Issue #12: credentials never appear, in any encoding, in results, errors (and their chains), events,
reprs, or the log lines of the SDK and its HTTP client — over real HTTP against the loopback server."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import subprocess
import sys
import textwrap
import traceback
import urllib.parse
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from menglong_magic import ChatAgent
from menglong_magic import events as ev
from menglong_magic.models import ModelError, ModelRequest, OpenAIModel, RetryPolicy
from menglong_magic.secrets import redact, register_secret, secret_forms
from menglong_magic.testing import reply
from menglong_magic.testing.server import ScriptedOpenAIServer, disconnect, fault, malformed

KEY = "tok-KEYARG-4f8a2b9c1d"
ENV_KEY = "tok-KEYENV-7e6d5c4b3a"
HEADER = "hdr-PLANTED-91b2c3d4e5"
BASIC_USER, BASIC_PASSWORD = "alice", "pw-BASIC-0a1b2c3d"
URL_PASSWORD = "tok-SECRET-999"
FAST = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.05)
SECRETS = [KEY, ENV_KEY, HEADER, BASIC_PASSWORD, URL_PASSWORD]


def encodings(secret: str) -> set[str]:
    """Every form the issue names, built independently of the redaction code under test."""
    forms = {
        secret,
        f"Bearer {secret}",
        urllib.parse.quote(secret),
        urllib.parse.quote(secret, safe=""),
        base64.b64encode(f":{secret}".encode()).decode(),
        base64.b64encode(f"user:{secret}".encode()).decode(),
        base64.b64encode(f"{BASIC_USER}:{secret}".encode()).decode(),
        base64.b64encode(secret.encode()).decode().rstrip("="),
        secret[: len(secret) // 2 + 2],  # a "partially masked" form that still gives most of it away
    }
    return forms


def leaks(*texts: object) -> list[str]:
    found = []
    for text in texts:
        s = str(text)
        for secret in SECRETS:
            found += [f"{form!r} in {s[:200]!r}" for form in encodings(secret) if form in s]
    return found


def chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def frame_locals(exc: BaseException) -> list[Any]:
    values = []
    tb = exc.__traceback__
    while tb is not None:
        values += list(tb.tb_frame.f_locals.values())
        tb = tb.tb_next
    return values


# --------------------------------------------------------------------------- redaction itself


@pytest.mark.parametrize("secret", SECRETS)
def test_redact_removes_every_encoding_and_keeps_ordinary_text(secret: str) -> None:
    register_secret(secret)
    for form in encodings(secret) - {secret[: len(secret) // 2 + 2]}:
        text = f"before {form} after"
        clean = redact(text)
        assert leaks(clean) == [] and clean.startswith("before ") and clean.endswith(" after"), (form, clean)
    assert secret_forms(secret) >= {secret, urllib.parse.quote(secret, safe="")}
    assert redact("the capital of France is Paris") == "the capital of France is Paris"


def test_basic_header_value_registers_the_decoded_password() -> None:
    token = base64.b64encode(f"{BASIC_USER}:{BASIC_PASSWORD}".encode()).decode()
    register_secret(f"Basic {token}")
    assert BASIC_PASSWORD not in redact(f"password was {BASIC_PASSWORD}")


# --------------------------------------------------------------------------- URL user info: refused


@pytest.mark.parametrize("where", ["argument", "agent", "environment"])
def test_url_user_info_is_refused_with_a_clear_error(
    openai_server: ScriptedOpenAIServer, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    url = openai_server.base_url.replace("://", f"://user:{URL_PASSWORD}@")
    with pytest.raises(ValueError) as info:
        if where == "argument":
            OpenAIModel("m", base_url=url, api_key=KEY)
        elif where == "agent":
            ChatAgent(base_url=url, api_key=KEY)
        else:
            monkeypatch.setenv("OPENAI_BASE_URL", url)
            monkeypatch.setenv("OPENAI_API_KEY", ENV_KEY)
            _ = ChatAgent().model  # the default model is resolved on first use
    message = str(info.value)
    assert "must not contain credentials" in message and "api_key=" in message and "default_headers" in message
    assert ("OPENAI_BASE_URL" in message) == (where == "environment")
    assert leaks(message, "".join(traceback.format_exception(info.value))) == []
    assert openai_server.requests == []  # nothing was sent with the credential


def test_bearer_key_and_default_headers_are_sent(openai_server: ScriptedOpenAIServer) -> None:
    openai_server.require_authorization = f"Bearer {KEY}"
    openai_server.enqueue(reply("authorised"))
    model = OpenAIModel("m", base_url=openai_server.base_url, api_key=KEY, default_headers={"X-Api-Token": HEADER})
    agent = ChatAgent(model=model)
    assert agent.chat("hi") == "authorised"
    assert openai_server.authorization_schemes == ["Bearer"]
    sent = {k.lower(): v for k, v in openai_server.request_headers[0].items()}
    assert sent["x-api-token"] == HEADER
    assert model.default_headers == {"X-Api-Token": "***"}
    assert leaks(repr(model), repr(agent), model.default_headers) == []


def test_a_wrong_key_is_rejected_by_the_server(openai_server: ScriptedOpenAIServer) -> None:
    openai_server.require_authorization = "Bearer something-else-entirely"
    agent = ChatAgent(model=OpenAIModel("m", base_url=openai_server.base_url, api_key=KEY, retry=FAST))
    with pytest.raises(ModelError) as info:
        agent.chat("hi")
    assert info.value.status == 401 and "check OPENAI_API_KEY" in str(info.value)
    assert "model 'm'" in str(info.value) and f"at {openai_server.base_url}/chat/completions" in str(info.value)
    assert leaks(str(info.value)) == []


@pytest.mark.parametrize("name", ["gpt-nonexistent-9", "my-org/tiny-model"])
def test_an_unknown_model_names_the_model_and_the_endpoint(openai_server: ScriptedOpenAIServer, name: str) -> None:
    openai_server.enqueue(fault(404, message=f"The model `{name}` does not exist"))
    agent = ChatAgent(model=OpenAIModel(name, base_url=openai_server.base_url, api_key=KEY, retry=FAST))
    with pytest.raises(ModelError) as info:
        agent.chat("hi")
    message = str(info.value)
    assert info.value.status == 404 and f"model {name!r}" in message
    assert f"at {openai_server.base_url}/chat/completions" in message and "check the model name" in message
    assert leaks(message) == []


# --------------------------------------------------------------------------- a server that echoes headers


def make_model(server: ScriptedOpenAIServer, source: str, monkeypatch: pytest.MonkeyPatch) -> OpenAIModel:
    if source == "api_key":
        return OpenAIModel("m", base_url=server.base_url, api_key=KEY, retry=FAST)
    if source == "environment":
        monkeypatch.setenv("OPENAI_API_KEY", ENV_KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        return OpenAIModel("m", retry=FAST)
    if source == "default_headers":
        headers = {"X-Api-Token": HEADER}
        return OpenAIModel("m", base_url=server.base_url, api_key=KEY, retry=FAST, default_headers=headers)
    basic = base64.b64encode(f"{BASIC_USER}:{BASIC_PASSWORD}".encode()).decode()
    return OpenAIModel("m", base_url=server.base_url, retry=FAST, default_headers={"Authorization": f"Basic {basic}"})


SOURCES = ["api_key", "environment", "default_headers", "basic_authorization_header"]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("source", SOURCES)
async def test_an_echoing_server_leaks_nothing(
    openai_server: ScriptedOpenAIServer, monkeypatch: pytest.MonkeyPatch, source: str, stream: bool
) -> None:
    model = make_model(openai_server, source, monkeypatch)
    agent = ChatAgent(model=model, stream=stream)
    openai_server.enqueue(fault(401, echo_headers=True, message="Unauthorized"))
    seen: list[ev.Event] = []
    result = await agent.arun("x", on_event=seen.append)
    # The secret really went over the wire and was echoed back (else this test proves nothing).
    headers = {name.lower(): value for name, value in openai_server.request_headers[0].items()}  # httpx 0.27 keeps case
    assert openai_server.authorization_schemes[0] in ("Bearer", "Basic")
    if source == "default_headers":
        assert headers.get("x-api-token") == HEADER
    assert result.stop_reason == "error" and "HTTP 401" in (result.error or "")
    assert "request headers:" in (result.error or "") and "***" in (result.error or "")
    assert leaks(result.error, repr(result), result.to_json(), *map(repr, seen), agent.messages) == []

    openai_server.enqueue(fault(500, echo_headers=True), fault(500, echo_headers=True))
    with pytest.raises(ModelError) as info:
        await agent.chat_async("y")
    err = info.value
    assert "after 2 attempts" in str(err)
    assert err.__cause__ is None and err.__context__ is None and err.__suppress_context__
    assert [type(e) for e in chain(err)] == [ModelError]
    assert leaks(str(err), "".join(traceback.format_exception(err))) == []
    assert not any(isinstance(v, (openai.OpenAIError, json.JSONDecodeError)) for v in frame_locals(err))


@pytest.mark.parametrize(
    "failure", [fault(400), fault(503), disconnect(), malformed()], ids=["400", "503", "disconnect", "malformed"]
)
async def test_model_errors_chain_no_exception(openai_server: ScriptedOpenAIServer, failure: Any) -> None:
    model = OpenAIModel("m", base_url=openai_server.base_url, api_key=KEY, retry=FAST)
    openai_server.enqueue(failure, failure)
    with pytest.raises(ModelError) as info:
        await model.request(ModelRequest(messages=[{"role": "user", "content": "x"}]), lambda e: None)
    assert list(chain(info.value)) == [info.value]
    assert not any(isinstance(v, BaseException) for v in frame_locals(info.value) if v is not info.value)
    assert "'m' failed" in str(info.value)


# --------------------------------------------------------------------------- logs


@pytest.mark.parametrize("stream", [False, True])
async def test_sdk_and_http_client_logs_are_redacted(
    openai_server: ScriptedOpenAIServer, stream: bool, library: str, caplog: pytest.LogCaptureFixture
) -> None:
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)  # added like basicConfig would: on the root, after the model exists
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    model = OpenAIModel("m", base_url=openai_server.base_url, api_key=KEY, retry=FAST,
                        default_headers={"X-Api-Token": HEADER}, http_library=library)  # type: ignore[arg-type]
    assert model.http_library == library
    root = logging.getLogger()
    root.addHandler(handler)
    caplog.set_level(logging.DEBUG)
    try:
        openai_server.enqueue(fault(429, echo_headers=True, retry_after=0.01), reply("fine"))
        agent = ChatAgent(model=model, stream=stream)
        assert await agent.chat_async("hi") == "fine"
    finally:
        root.removeHandler(handler)
    text = buffer.getvalue()
    assert "HTTP Request: POST http://127.0.0.1" in text  # httpx(2) INFO line (the SDK's client, either library)
    if library == "httpx":
        assert "X-Echo-Authorization" in text  # httpcore's DEBUG line with the echoed header (aiohttp logs none)
    assert leaks(text, caplog.text, *(r.getMessage() for r in caplog.records)) == []


def test_logs_are_redacted_in_a_fresh_process_with_basicconfig_first(openai_server: ScriptedOpenAIServer,
                                                                     library: str) -> None:
    """As in a notebook: basicConfig(DEBUG) before anything is imported; the HTTP stack imports lazily."""
    for _ in range(3):
        openai_server.enqueue(fault(401, echo_headers=True))
    script = textwrap.dedent(
        """
        import logging, os, sys
        logging.basicConfig(level=logging.DEBUG, stream=sys.stdout)
        from menglong_magic import ChatAgent
        from menglong_magic.models import ModelError, OpenAIModel
        model = OpenAIModel("m", base_url=os.environ["T_URL"], default_headers={"X-Api-Token": os.environ["T_HDR"]})
        try:
            ChatAgent(model=model).chat("hi")
        except ModelError as exc:
            logging.getLogger("menglong_magic").exception("the run failed: %s", exc)
        """
    )
    env = {**os.environ, "OPENAI_API_KEY": ENV_KEY, "T_URL": openai_server.base_url, "T_HDR": HEADER,
           "MENGLONG_HTTP_LIBRARY": library}
    env.pop("MENGLONG_MODEL", None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-2000:]
    assert "HTTP Request: POST" in output and "the run failed" in output
    assert ("X-Echo-Authorization" in output) == (library == "httpx")  # only httpcore logs response headers
    assert leaks(output) == []
