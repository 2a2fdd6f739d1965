"""MCP servers as agent tools: ``MCPServer.stdio(...)`` / ``MCPServer.http(...)`` (optional extra ``mcp``).

An :class:`MCPServer` is a :class:`~menglong_magic.tools.Toolset`: give it to ``ChatAgent(mcp_servers=[...])`` or
``agent.add_mcp_server(server)`` and the server's tools (name, description and input schema as the server gives
them) join every tool-using run. A tool name that clashes with another tool gets the server's name as prefix
(the agent warns once).

Life cycle. A server is opened lazily, on the running event loop, the first time a run needs its tools; its
tool list is cached (``await server.refresh()`` fetches it again). The MCP client session lives in a
background task of its own on that loop, so runs in different tasks (cells of a notebook, requests of a
service) share it safely: anyio's cancel scopes of the session are entered and left by that one task. It is
closed by ``await server.aclose()`` / ``await agent.aclose()`` / ``async with agent:``, by :func:`close_all`
(``%unload_ext menglong_magic`` calls it), and at interpreter exit. A closed server reopens on next use.

stdio servers inside Jupyter. The SDK sends a stdio server's stderr to ``sys.stderr`` by default, which fails in
ipykernel (``UnsupportedOperation: fileno``, modelcontextprotocol/python-sdk#1103). Here each server's stderr
goes to a log file of its own (:attr:`MCPServer.log_path`); when a server fails to start or dies, the error
names its exit code and quotes its last stderr lines. The child gets an explicit environment: the SDK's
allow-list (``PATH``, ``HOME``, ``USER``, ``LOGNAME``, ``SHELL``, ``TERM``) plus what you pass as ``env=``,
never the rest of the kernel's environment (``OPENAI_API_KEY`` and friends).

Results. Text content goes back to the model as the tool's result (structured content as JSON when the server
sent no text); a result with ``is_error`` becomes a tool error, and so does a dead server: the run goes on and
the model is told. Progress notifications from the server show on the tool call's card
(:meth:`RunContext.progress`).
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import itertools
import json
import os
import re
import signal
import tempfile
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal

from .base import RunContext, Tool

__all__ = ["MCPServer", "MCPServerError", "MCPTool", "MCPToolError", "aclose_all", "close_all", "open_servers"]

State = Literal["closed", "starting", "running", "failed", "dead"]

_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,48}$")
_RUNNERS = {"python", "python3", "node", "npx", "uvx", "uv", "deno", "bun", "pipx", "bunx"}
_LOG_DIR: str | None = None
_LOG_LOCK = threading.Lock()
_counter = itertools.count(1)
#: Every server that has been opened in this process (for close_all and the exit hook).
_OPEN: weakref.WeakSet[MCPServer] = weakref.WeakSet()
#: Set by a server's session task while its stdio transport spawns the child (see _install_spawn_hook).
_SPAWN_SINK: contextvars.ContextVar[Callable[[Any], None] | None] = contextvars.ContextVar(
    "menglong_mcp_spawn_sink", default=None)


class MCPServerError(RuntimeError):
    """An MCP server could not be started, died, or its connection failed."""


class MCPToolError(RuntimeError):
    """The server answered a tool call with ``is_error``: the message is the server's text."""


def _require_mcp() -> Any:
    try:
        import mcp
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("MCP servers need the official MCP SDK: pip install 'menglong-magic[mcp]' "
                          "(or pip install 'mcp>=2,<3')") from exc
    _install_spawn_hook()
    return mcp


_hook_installed = False


def _install_spawn_hook() -> None:
    """Learn the process object of the stdio children we start (for pid, exit code and liveness).

    The SDK's ``stdio_client`` spawns through the module function ``_create_platform_compatible_process``.
    The wrapper only reports the process to the server whose session task is spawning it (a ContextVar);
    everyone else's calls pass through unchanged. If a future SDK renames the function, nothing breaks:
    the pid is just unknown and death is noticed from the connection instead.
    """
    global _hook_installed
    if _hook_installed:
        return
    _hook_installed = True
    try:
        import mcp.client.stdio as stdio_module
    except ImportError:  # pragma: no cover
        return
    original = getattr(stdio_module, "_create_platform_compatible_process", None)
    if original is None or getattr(original, "__menglong_hook__", False):  # pragma: no cover
        return

    async def spawn(*args: Any, **kwargs: Any) -> Any:
        process = await original(*args, **kwargs)
        sink = _SPAWN_SINK.get()
        if sink is not None:
            sink(process)
        return process

    spawn.__menglong_hook__ = True  # type: ignore[attr-defined]
    stdio_module._create_platform_compatible_process = spawn  # type: ignore[attr-defined]


def _log_dir() -> str:
    global _LOG_DIR
    with _LOG_LOCK:
        if _LOG_DIR is None:
            _LOG_DIR = tempfile.mkdtemp(prefix="menglong-mcp-")
        return _LOG_DIR


def _default_name(command: str, args: Sequence[str]) -> str:
    base = os.path.basename(command)
    stem = base
    if re.sub(r"[\d.]+$", "", base) in _RUNNERS:
        for arg in args:
            if not arg.startswith("-") and arg not in ("run", "-m"):
                stem = os.path.splitext(os.path.basename(arg.rstrip("/")))[0]
                break
    return _sanitize(stem)


def _sanitize(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")[:48]
    return name or "mcp"


def _strip_userinfo(url: str) -> str:
    return re.sub(r"(?<=://)[^/@]*@", "", url)


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups."""
    while isinstance(getattr(exc, "exceptions", None), (list, tuple)) and exc.exceptions:  # (Base)ExceptionGroup
        exc = exc.exceptions[0]
    return exc


def _describe(exc: BaseException) -> str:
    exc = _leaf(exc)
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class MCPTool(Tool):
    """One tool of an MCP server: no Python function; the server validates the arguments and runs it."""

    def __init__(self, server: MCPServer, remote_name: str, name: str | None = None, description: str | None = None,
                 input_schema: Mapping[str, Any] | None = None, output_schema: Mapping[str, Any] | None = None):
        self.function = None  # type: ignore[assignment]
        self.server = server
        self.remote_name = remote_name
        self.name = name or remote_name
        self.description = description or ""
        schema = dict(input_schema or {})
        schema.setdefault("type", "object")
        schema.setdefault("properties", {})
        self.parameters = schema
        self.output_schema = dict(output_schema) if output_schema else None
        self.requires_approval = False
        self.is_async = True
        self.context_parameter = None
        self.arguments_model = None  # type: ignore[assignment]

    def renamed(self, name: str, description: str | None = None) -> MCPTool:
        return MCPTool(self.server, self.remote_name, name,
                       description if description is not None else self.description, self.parameters,
                       self.output_schema)

    def validate(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Pass-through: the server validates against its own schema and answers with an error result."""
        return dict(arguments)

    async def call(self, arguments: dict[str, Any], context: RunContext | None = None) -> Any:
        progress = None
        if context is not None:
            def progress(done: float, total: float | None, note: str | None) -> None:
                context.progress(done, total, note or "")
        result = await self.server.call_tool(self.remote_name, arguments, progress=progress)
        text = result_text(result)
        if getattr(result, "is_error", False):
            raise MCPToolError(text or "the tool failed (no message)")
        return text

    def __repr__(self) -> str:
        return f"<mcp tool {self.name} of {self.server.name}>"


def result_text(result: Any) -> str:
    """What the model sees of a ``CallToolResult``: its text blocks, else its structured content as JSON."""
    parts: list[str] = []
    for block in getattr(result, "content", None) or []:
        kind = getattr(block, "type", "")
        if kind == "text":
            parts.append(block.text)
        elif kind in ("image", "audio"):
            parts.append(f"[{kind} {getattr(block, 'mime_type', '') or ''}]".replace(" ]", "]"))
        elif kind == "resource_link":
            parts.append(f"[resource {getattr(block, 'uri', '')}]")
        elif kind == "resource":
            resource = getattr(block, "resource", None)
            parts.append(getattr(resource, "text", None) or f"[resource {getattr(resource, 'uri', '')}]")
    structured = getattr(result, "structured_content", None)
    if not parts and structured is not None:
        return json.dumps(structured, ensure_ascii=False)
    return "\n".join(parts)


class MCPServer:
    """An MCP server whose tools an agent can use. Build one with :meth:`stdio` or :meth:`http`.

    Attributes you may read: ``name``, ``transport`` (``"stdio"``/``"http"``), ``state`` (``closed``,
    ``starting``, ``running``, ``failed``, ``dead``), ``pid`` (stdio, while running), ``log_path`` (stdio
    stderr), ``tools`` (the cached list, or None before the first listing), ``error`` (the last failure).
    """

    def __init__(self, transport: Literal["stdio", "http"], *, name: str, command: str | None = None,
                 args: Sequence[str] = (), env: Mapping[str, str] | None = None, cwd: str | os.PathLike[str] | None
                 = None, url: str | None = None, headers: Mapping[str, str] | None = None,
                 startup_timeout: float = 30.0, call_timeout: float | None = None):
        if not _NAME_RE.match(name):
            raise ValueError(f"MCP server name {name!r}: use 1-48 letters, digits, '_' or '-' "
                             "(it prefixes tool names on a clash)")
        self.name = name
        self.transport = transport
        self.command = command
        self.args = [str(a) for a in args]
        self._env = {str(k): str(v) for k, v in (env or {}).items()}
        self.cwd = os.fspath(cwd) if cwd is not None else None
        self.url = url
        self._headers = dict(headers or {})
        self.startup_timeout = startup_timeout
        self.call_timeout = call_timeout
        self.state: State = "closed"
        self.error: str | None = None
        self.tools: list[MCPTool] | None = None
        self.log_path: str | None = (os.path.join(_log_dir(), f"{name}-{next(_counter)}.log")
                                     if transport == "stdio" else None)
        self._process: Any = None
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._owner: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self._lock: asyncio.Lock | None = None
        self._stale = False

    # ------------------------------------------------------------------ construction
    @classmethod
    def stdio(cls, command: str, args: Sequence[str] = (), env: Mapping[str, str] | None = None,
              cwd: str | os.PathLike[str] | None = None, name: str | None = None, *, startup_timeout: float = 30.0,
              call_timeout: float | None = None) -> MCPServer:
        """A server started as a child process speaking MCP over its stdin/stdout.

        ``env``: variables for the child on top of ``PATH``/``HOME``/``USER``/``LOGNAME``/``SHELL``/``TERM``
        (nothing else of this process's environment is passed). ``name`` defaults to the script's or
        command's name. ``call_timeout``: seconds a tool call may take (None: no limit).
        """
        if not command:
            raise ValueError("MCPServer.stdio needs a command")
        args = [str(a) for a in args]
        return cls("stdio", name=name or _default_name(command, args), command=command, args=args, env=env,
                   cwd=cwd, startup_timeout=startup_timeout, call_timeout=call_timeout)

    @classmethod
    def http(cls, url: str, headers: Mapping[str, str] | None = None, name: str | None = None, *,
             startup_timeout: float = 30.0, call_timeout: float | None = None) -> MCPServer:
        """A server reached over streamable HTTP at ``url`` (e.g. ``http://127.0.0.1:8765/mcp``).

        ``headers`` (e.g. ``{"Authorization": "Bearer ..."}``) go with every request; their values never
        appear in reprs or errors.
        """
        if not re.match(r"^https?://", url):
            raise ValueError(f"not an http(s) URL: {_strip_userinfo(url)!r}")
        host = re.sub(r"^https?://", "", _strip_userinfo(url)).split("/")[0].split(":")[0]
        return cls("http", name=name or _sanitize(host), url=url, headers=headers, startup_timeout=startup_timeout,
                   call_timeout=call_timeout)

    def __repr__(self) -> str:
        if self.transport == "stdio":
            target = " ".join([self.command or "", *self.args])
            extra = f", env={sorted(self._env)!r}" if self._env else ""
        else:
            target = _strip_userinfo(self.url or "")
            extra = f", headers={sorted(self._headers)!r}" if self._headers else ""
        pid = f", pid={self.pid}" if self.pid else ""
        return f"<MCPServer {self.name!r} {self.transport}: {target!r}{extra}, state={self.state!r}{pid}>"

    @property
    def env(self) -> dict[str, str]:
        """The variables given for the child (on top of the SDK's allow-list)."""
        return dict(self._env)

    @property
    def pid(self) -> int | None:
        """The stdio child's process id while it runs."""
        process = self._process
        if process is None or process.returncode is not None:
            return None
        return int(process.pid)

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.returncode

    def describe(self) -> str:
        """One line: what the server is (no secrets)."""
        if self.transport == "stdio":
            return " ".join([self.command or "", *self.args])
        return _strip_userinfo(self.url or "")

    def stderr_tail(self, lines: int = 20) -> list[str]:
        """The last lines the stdio server wrote to its stderr (its log file)."""
        if not self.log_path or not os.path.exists(self.log_path):
            return []
        with open(self.log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16384))
            data = f.read().decode("utf-8", "replace")
        return [line for line in data.splitlines() if line.strip()][-lines:]

    # ------------------------------------------------------------------ Toolset protocol
    async def list_tools(self) -> list[Tool]:
        """The server's tools (cached after the first listing; opens the server if needed)."""
        if self.tools is not None and not self._stale:
            return list(self.tools)
        return list(await self.refresh())

    async def refresh(self) -> list[MCPTool]:
        """Fetch the tool list from the server again (opens it if needed)."""
        client = await self._ensure_open()
        try:
            listing = await self._guard(lambda: client.list_tools(cache_mode="refresh"), "listing its tools")
        except MCPServerError:
            raise
        tools = [MCPTool(self, t.name, t.name, t.description, t.input_schema, getattr(t, "output_schema", None))
                 for t in listing.tools]
        cursor = getattr(listing, "next_cursor", None)
        pages = 0
        while cursor and pages < 100:
            pages += 1
            page = await self._guard(lambda c=cursor: client.list_tools(cursor=c, cache_mode="refresh"),
                                     "listing its tools")
            tools += [MCPTool(self, t.name, t.name, t.description, t.input_schema, getattr(t, "output_schema", None))
                      for t in page.tools]
            cursor = getattr(page, "next_cursor", None)
        self.tools = tools
        self._stale = False
        return list(tools)

    async def call_tool(self, name: str, arguments: Mapping[str, Any] | None = None, *,
                        progress: Callable[[float, float | None, str | None], None] | None = None) -> Any:
        """Call a tool; returns the SDK's ``CallToolResult``. Raises :class:`MCPServerError` if the server is
        unreachable or dies (the next call starts it again)."""
        client = await self._ensure_open()

        async def on_progress(done: float, total: float | None, message: str | None) -> None:
            if progress is not None:
                progress(done, total, message)

        return await self._guard(
            lambda: client.call_tool(name, dict(arguments or {}), read_timeout_seconds=self.call_timeout,
                                     progress_callback=on_progress if progress is not None else None),
            f"the call to {name!r}")

    async def aclose(self) -> None:
        """Close the session (and stop a stdio child). The server reopens on next use."""
        owner, loop = self._owner, self._loop
        if owner is None or loop is None:
            self._set_closed()
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not loop:
            if loop.is_closed() or not loop.is_running():
                self._abandon()
                return
            future = asyncio.run_coroutine_threadsafe(self.aclose(), loop)
            await asyncio.wrap_future(future)
            return
        await self._stop_owner()
        self._set_closed()

    # ------------------------------------------------------------------ internals
    def _set_closed(self) -> None:
        self.state = "closed"
        self.tools = None
        self._owner = None
        self._client = None

    def _alive(self) -> bool:
        if self._client is None or self._owner is None or self._owner.done():
            return False
        return self._process is None or self._process.returncode is None

    async def _ensure_open(self) -> Any:
        _require_mcp()
        loop = asyncio.get_running_loop()
        if self._loop is not None and self._loop is not loop:
            if self._loop.is_closed() or not self._loop.is_running():
                self._abandon()  # the loop that owned the session is gone: forget it, stop its child
            elif self._owner is not None and not self._owner.done():
                raise MCPServerError(f"MCP server {self.name!r} is open on another event loop (thread); "
                                     "await server.aclose() there first")
            self._lock = None
        if self._lock is None or self._loop is not loop:
            self._lock = asyncio.Lock()
            self._loop = loop
        if self._alive():
            return self._client
        async with self._lock:
            if self._alive():
                return self._client
            if self._owner is not None:  # a dead session: wind it down before starting again
                await self._stop_owner()
            return await self._start(loop)

    async def _start(self, loop: asyncio.AbstractEventLoop) -> Any:
        self.state = "starting"
        self.error = None
        self._process = None
        self._stop = asyncio.Event()
        ready: asyncio.Future[Any] = loop.create_future()
        # A task of its own, outside any run's task: the session's anyio scopes stay in one task for its life.
        owner = loop.create_task(self._serve(ready, self._stop), name=f"mcp-server-{self.name}")
        self._owner = owner
        _OPEN.add(self)
        try:
            client = await asyncio.wait_for(asyncio.shield(ready), self.startup_timeout)
        except TimeoutError:
            await self._stop_owner()
            self.state = "failed"
            self.error = self._with_stderr(f"MCP server {self.name!r} did not start within {self.startup_timeout:g}s")
            raise MCPServerError(self.error) from None
        except MCPServerError:
            raise
        return client

    async def _serve(self, ready: asyncio.Future[Any], stop: asyncio.Event) -> None:
        """The session's own task: open it, hand it out, wait for the stop signal, close it."""
        mcp = _require_mcp()
        errlog = None
        token = None
        try:
            if self.transport == "stdio":
                from mcp.client.stdio import stdio_client

                errlog = self._open_log()
                params = mcp.StdioServerParameters(command=self.command or "", args=self.args, env=self._env or None,
                                                   cwd=self.cwd)
                token = _SPAWN_SINK.set(self._spawned)
                transport: Any = stdio_client(params, errlog=errlog)
            else:
                # The mcp package's own client factory (its defaults for streamable HTTP) is not re-exported.
                from mcp.client.streamable_http import streamable_http_client
                from mcp.shared._httpx_utils import create_mcp_http_client  # noqa: PLC2701

                http_client = create_mcp_http_client(headers=self._headers or None)
                transport = _http_transport(streamable_http_client, self.url or "", http_client)
            client = mcp.Client(transport, message_handler=self._on_message)
            async with client:
                if token is not None:
                    _SPAWN_SINK.reset(token)
                    token = None
                self._client = client
                self.state = "running"
                if not ready.done():
                    ready.set_result(client)
                await stop.wait()
        except BaseException as exc:
            cancelled = isinstance(exc, asyncio.CancelledError)
            message = (f"MCP server {self.name!r} was cancelled while starting" if cancelled else
                       self._with_stderr(f"MCP server {self.name!r} failed to start: {self._explain(exc)}"))
            if not ready.done():
                self.state = "failed"
                self.error = message
                ready.set_exception(MCPServerError(message))
            elif not cancelled:
                self.error = self._with_stderr(f"MCP server {self.name!r} closed with an error: {_describe(exc)}")
            if cancelled:
                raise
        finally:
            if token is not None:
                _SPAWN_SINK.reset(token)
            self._client = None
            if errlog is not None:
                errlog.close()

    def _open_log(self) -> Any:
        """The stdio child's stderr: a real file (appended to across restarts), never ``sys.stderr``."""
        errlog = open(self.log_path or os.devnull, "a", encoding="utf-8", errors="replace")
        errlog.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {self.describe()}\n")
        errlog.flush()
        return errlog

    def _explain(self, exc: BaseException) -> str:
        leaf = _leaf(exc)
        if isinstance(leaf, FileNotFoundError):
            return f"command not found: {self.command!r}"
        code = self.returncode
        text = _describe(leaf)
        return f"{text} (the process exited with code {code})" if code is not None else text

    def _spawned(self, process: Any) -> None:
        self._process = process

    async def _on_message(self, message: Any) -> None:
        root = getattr(message, "root", message)
        if type(root).__name__ == "ToolListChangedNotification":
            self._stale = True  # the next run lists the tools again

    async def _guard(self, request: Callable[[], Awaitable[Any]], what: str) -> Any:
        """Run one request; a dead server or broken connection becomes an MCPServerError with its last words."""
        try:
            return await request()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not self._connection_lost(exc):
                raise MCPServerError(f"MCP server {self.name!r} failed during {what}: {_describe(exc)}") from None
            await self._wait_exit(1.0)
            code = self.returncode
            if code is not None:
                died = f"died (exit code {code})"
            else:
                died = "became unreachable" if self.transport == "http" else "closed the connection"
            message = self._with_stderr(f"MCP server {self.name!r} {died} during {what}")
            self.error = message
            await self._stop_owner()
            self.state = "dead"
            raise MCPServerError(message) from None

    def _connection_lost(self, exc: BaseException) -> bool:
        if self._process is not None and self._process.returncode is not None:
            return True
        leaf = _leaf(exc)
        if "connection closed" in str(leaf).lower():
            return True
        module = type(leaf).__module__ or ""
        return isinstance(leaf, (OSError, EOFError)) or module.startswith(("httpx", "httpcore", "anyio"))

    async def _wait_exit(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        # The SDK's process object has no exit event to await: poll its return code, as the SDK itself does.
        while self._process is not None and self._process.returncode is None:
            if time.monotonic() >= deadline:
                return
            await asyncio.sleep(0.02)

    def _with_stderr(self, message: str) -> str:
        tail = self.stderr_tail(40)
        starts = [i for i, line in enumerate(tail) if line.startswith("--- ") and " starting: " in line]
        tail = tail[starts[-1] + 1:] if starts else tail  # only this start's lines
        tail = tail[-10:]
        if not tail:
            return message if self.transport == "http" else f"{message} (its stderr was empty: {self.log_path})"
        quoted = "\n".join(f"    {line}" for line in tail)
        return f"{message}. Last lines of its stderr ({self.log_path}):\n{quoted}"

    async def _stop_owner(self) -> None:
        owner, stop = self._owner, self._stop
        if owner is None:
            return
        if stop is not None:
            stop.set()
        if not owner.done():
            # The SDK's stdio shutdown: close stdin, wait 2 s, SIGTERM, 2 s, SIGKILL; all bounded.
            done, _ = await asyncio.wait({owner}, timeout=10)
            if not done:
                owner.cancel()
                await asyncio.wait({owner}, timeout=5)
        if owner.done() and not owner.cancelled():
            owner.exception()  # retrieved: no "exception was never retrieved" noise
        self._owner = None
        self._client = None

    def _abandon(self) -> None:
        """The owning loop is gone: stop the child ourselves (its process group) and forget the session."""
        _kill_tree(self._process)
        self._owner = None
        self._client = None
        self._stop = None
        self._lock = None
        self._loop = None
        if self.state in ("running", "starting"):
            self.state = "closed"
        self.tools = None


def _http_transport(factory: Callable[..., Any], url: str, http_client: Any) -> Any:
    """``streamable_http_client`` owning the httpx client it is given (closed when the transport closes)."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def transport() -> Any:
        async with http_client, factory(url, http_client=http_client) as streams:
            yield streams

    return transport()


def _kill_tree(process: Any, grace: float = 2.0) -> None:
    """SIGTERM the child's process group (the SDK starts it in a new session), SIGKILL after ``grace``."""
    if process is None or process.returncode is not None:
        return
    pid = int(process.pid)
    try:
        if hasattr(os, "killpg"):
            os.killpg(pid, signal.SIGTERM)
        else:  # pragma: no cover - Windows
            os.kill(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            finished, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            finished = pid  # reaped elsewhere (or not our child): check it is gone
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            finished = 0
        if finished == pid:
            return
        time.sleep(0.02)
    try:
        os.killpg(pid, signal.SIGKILL) if hasattr(os, "killpg") else os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def open_servers() -> list[MCPServer]:
    """The servers of this process that are open (running or starting)."""
    return [s for s in list(_OPEN) if s._owner is not None and not s._owner.done()]


async def aclose_all() -> None:
    """Close every open MCP server of this process (on the running loop)."""
    servers = open_servers()
    if servers:
        await asyncio.gather(*(s.aclose() for s in servers), return_exceptions=True)


def close_all() -> Awaitable[Any] | None:
    """Close every open MCP server; callable from sync code (``%unload_ext`` calls it).

    With no running loop it finishes before returning. Inside a running loop (a kernel cell) it cannot wait:
    it schedules the closes on that loop and returns the future (they finish as soon as the cell yields).
    """
    servers = open_servers()
    if not servers:
        return None
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    pending = []
    for server in servers:
        loop = server._loop
        if loop is None or loop.is_closed():
            server._abandon()
        elif loop is running:
            pending.append(loop.create_task(server.aclose()))
        elif loop.is_running():  # another thread's loop
            asyncio.run_coroutine_threadsafe(server.aclose(), loop)
        else:
            try:
                loop.run_until_complete(asyncio.wait_for(server.aclose(), 15))
            except Exception:
                server._abandon()
    return asyncio.gather(*pending, return_exceptions=True) if pending else None


def _close_at_exit() -> None:
    """Interpreter exit: a graceful close where the owning loop can still run, else stop the children."""
    for server in open_servers():
        loop = server._loop
        try:
            if loop is not None and not loop.is_closed() and not loop.is_running():
                loop.run_until_complete(asyncio.wait_for(server.aclose(), 6))
        except BaseException:  # best effort at exit
            pass
        server._abandon()


atexit.register(_close_at_exit)
