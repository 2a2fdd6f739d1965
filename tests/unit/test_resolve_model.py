"""Model configuration order: explicit → MENGLONG_MODEL → OPENAI_* → local if installed → offline."""

from __future__ import annotations

import pytest

import menglong_magic.models as models
from menglong_magic.models import OfflineModel, OpenAIModel, ScriptedModel, resolve_model
from menglong_magic.models.local import LocalModel


@pytest.fixture
def no_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "local_model_available", lambda: False)


def test_explicit_model_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MENGLONG_MODEL", "offline")
    scripted = ScriptedModel([])
    assert resolve_model(scripted) is scripted
    assert isinstance(resolve_model("gpt-4o-mini"), OpenAIModel)


def test_menglong_model_before_openai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-1234567")
    monkeypatch.setenv("MENGLONG_MODEL", "offline")
    assert isinstance(resolve_model(), OfflineModel)


def test_openai_env_before_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "local_model_available", lambda: True)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    model = resolve_model()
    assert isinstance(model, OpenAIModel) and model.base_url == "http://127.0.0.1:9/v1"


def test_local_when_installed_then_offline_announced_once(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(models, "local_model_available", lambda: True)
    assert isinstance(resolve_model(), LocalModel)  # created lazily: no server starts until a request
    monkeypatch.setattr(models, "local_model_available", lambda: False)
    monkeypatch.setattr(models, "_announced_offline", False)
    assert isinstance(resolve_model(), OfflineModel)
    assert isinstance(resolve_model(), OfflineModel)
    err = capsys.readouterr().err
    assert err.count("offline demo model") == 1 and "OPENAI_API_KEY" in err


def test_explicit_base_url_and_key_make_an_openai_model(no_local: None) -> None:
    model = resolve_model(base_url="http://127.0.0.1:9/v1", api_key="sk-secret-999999")
    assert isinstance(model, OpenAIModel)
    assert "sk-secret" not in repr(model)
