"""Fixtures shared by every tier. Tier-specific fixtures live in each tier's conftest.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture
def openai_server() -> Iterator[ScriptedOpenAIServer]:  # noqa: F821
    """A scripted OpenAI-compatible server on 127.0.0.1 and a free port, stopped after the test."""
    from menglong_magic.testing.server import ScriptedOpenAIServer

    server = ScriptedOpenAIServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _no_ambient_model_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests choose their model explicitly; a developer's own OPENAI_* settings must not leak in."""
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "MENGLONG_MODEL", "MENGLONG_LOCAL_GGUF"):
        monkeypatch.delenv(name, raising=False)
