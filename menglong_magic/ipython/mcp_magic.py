"""``%agent_mcp``: add, list, refresh and remove an agent's MCP servers from a notebook.

::

    %agent_mcp add demo -- python examples/mcp_server.py      # stdio: everything after -- is the command
    %agent_mcp add docs http://127.0.0.1:8765/mcp             # streamable HTTP
    %agent_mcp add gh -e GITHUB_TOKEN=$token -- npx -y @modelcontextprotocol/server-github
    %agent_mcp list                                           # servers, state, pid, tools
    %agent_mcp refresh demo                                   # fetch its tool list again
    %agent_mcp remove demo                                    # close it (stops a stdio child)

``-a AGENT`` acts on a ``ChatAgent`` of the namespace instead of the per-kernel default agent. ``add``
connects at once and lists the server's tools, so a server that cannot start says so in that cell (with
its last stderr lines); ``--lazy`` defers that to the first run. Servers live on the kernel's loop across
cells and are closed by ``%agent_mcp remove``, ``%unload_ext menglong_magic`` and kernel shutdown.

Like ``%agent_run``, a ``%agent_mcp`` line at column 0 is rewritten into ``await ...`` so that it runs on the
kernel's loop (where the server's session lives); elsewhere the magic runs the same coroutine blocking.
"""

from __future__ import annotations

import shlex
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from ..agent import ChatAgent
from ..markup import terminal_safe
from ..tools.mcp import MCPServer, MCPServerError
from .cells import run_blocking
from .options import help_flag, named_agent


class MCPMagicError(Exception):
    """A server could not be reached: shown as its message, without a traceback."""

    def _render_traceback_(self) -> list[str]:
        # The message quotes the server's own stderr: shown, never interpreted by the terminal.
        return [f"{type(self).__name__}: {line}" if i == 0 else line
                for i, line in enumerate(terminal_safe(str(self)).splitlines())]


@magics_class
class MCPMagics(Magics):
    """``%agent_mcp add|list|refresh|remove``: MCP servers as tools of an agent."""

    @help_flag
    @magic_arguments()
    @argument("action", choices=["add", "list", "refresh", "remove"], help="what to do")
    @argument("name", nargs="?", help="the server's name (it prefixes its tool names on a clash)")
    @argument("url", nargs="?", help="add: a streamable HTTP URL (or give a stdio command after --)")
    @argument("-a", "--agent", help="name of a ChatAgent in the namespace (default: the per-kernel agent)")
    @argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE",
              help="add, stdio: an environment variable for the server (repeatable); nothing else of the "
                   "kernel's environment is passed except PATH, HOME, USER, LOGNAME, SHELL, TERM")
    @argument("--cwd", help="add, stdio: the server's working directory")
    @argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'",
              help="add, HTTP: a request header (repeatable)")
    @argument("--lazy", action="store_true", help="add: do not connect now, only on the first run")
    @line_magic
    def agent_mcp(self, line: str) -> None:
        """Manage an agent's MCP servers: ``add NAME -- COMMAND ARGS...``, ``add NAME URL``, ``list``,
        ``refresh [NAME]``, ``remove NAME``."""
        return run_blocking(self.execute(line))  # IPython expanded $name already, as for any line magic

    # ------------------------------------------------------------------ execution
    async def execute_magic(self, name: str, line: str, cell: str | None) -> None:
        """What the cell runner awaits for ``%agent_mcp``: ``$name`` expands as in any IPython line magic (the
        documented ``-e KEY=$token``), since its words are configuration, not text for a model."""
        await self.execute(self.shell.var_expand(line))

    async def execute(self, line: str) -> None:
        args, command = self._parse(line)
        agent = self._agent(args.agent)
        if args.action == "add":
            await self._add(agent, args, command)
        elif args.action == "list":
            self._list(agent)
        elif args.action == "refresh":
            for server in self._servers(agent, args.name):
                await self._connect(server)
                print(self._tools_line(server))
        else:
            if not args.name:
                raise UsageError("%agent_mcp remove NAME")
            server = self._find(agent, args.name)
            await agent.remove_toolset(server)
            print(f"removed MCP server {server.name!r} from {agent.name}")

    def _parse(self, line: str) -> tuple[Any, list[str]]:
        head, sep, tail = line.partition(" -- ")
        if not sep and line.rstrip().endswith(" --"):
            head, tail, sep = line.rstrip()[:-3], "", " -- "
        try:
            words = shlex.split(head)
            command = shlex.split(tail) if sep else []
        except ValueError as exc:
            raise UsageError(f"%agent_mcp: cannot parse the line: {exc}") from None
        args = self.agent_mcp.parser.parse_intermixed_args(words)  # options before or after NAME
        if sep and args.action != "add":
            raise UsageError("%agent_mcp: '-- COMMAND' only goes with add")
        return args, command

    async def _add(self, agent: ChatAgent, args: Any, command: list[str]) -> None:
        if not args.name:
            raise UsageError("%agent_mcp add NAME -- COMMAND ARGS...   or   %agent_mcp add NAME URL")
        if any(getattr(t, "name", None) == args.name for t in agent.toolsets):
            raise UsageError(f"{agent.name} already has a tool source named {args.name!r} "
                             f"(%agent_mcp remove {args.name} first)")
        try:
            if command:
                if args.url:
                    raise UsageError("%agent_mcp add: give either a URL or '-- COMMAND', not both")
                env = {}
                for item in args.env:
                    key, eq, value = item.partition("=")
                    if not eq or not key:
                        raise UsageError(f"-e {item!r}: write KEY=VALUE")
                    env[key] = value
                server = MCPServer.stdio(command[0], command[1:], env=env or None, cwd=args.cwd, name=args.name)
            elif args.url:
                headers = {}
                for item in args.header:
                    key, colon, value = item.partition(":")
                    if not colon or not key.strip():
                        raise UsageError("-H: write 'Name: value'")
                    headers[key.strip()] = value.strip()
                server = MCPServer.http(args.url, headers=headers or None, name=args.name)
            else:
                raise UsageError("%agent_mcp add NAME -- COMMAND ARGS...   or   %agent_mcp add NAME URL")
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if not args.lazy:
            await self._connect(server)
        agent.add_mcp_server(server)
        where = f"{server.transport}: {server.describe()}"
        if args.lazy:
            print(f"added MCP server {server.name!r} to {agent.name} ({where}); it starts on the first run")
        else:
            print(f"added MCP server {server.name!r} to {agent.name} ({where})")
            print(self._tools_line(server))

    async def _connect(self, server: MCPServer) -> None:
        try:
            await server.refresh()
        except MCPServerError as exc:
            await server.aclose()
            raise MCPMagicError(str(exc)) from None
        except ImportError as exc:  # the mcp extra is not installed: what to install, in one line
            await server.aclose()
            raise UsageError(str(exc)) from None

    def _list(self, agent: ChatAgent) -> None:
        servers = [t for t in agent.toolsets if isinstance(t, MCPServer)]
        if not servers:
            print(f"{agent.name}: no MCP servers (%agent_mcp add NAME -- COMMAND, or %agent_mcp add NAME URL)")
            return
        for server in servers:
            pid = f", pid {server.pid}" if server.pid else ""
            print(f"{server.name}: {server.transport} {server.describe()} [{server.state}{pid}]")
            print(self._tools_line(server))
            if server.state in ("failed", "dead") and server.error:
                print("  " + terminal_safe(server.error.splitlines()[0]))

    @staticmethod
    def _tools_line(server: MCPServer) -> str:
        if server.tools is None:
            return "  tools: (not listed yet: the server starts on the first run)"
        return terminal_safe(f"  tools: {', '.join(t.name for t in server.tools) or '(none)'}")  # names from the server

    def _servers(self, agent: ChatAgent, name: str | None) -> list[MCPServer]:
        if name:
            return [self._find(agent, name)]
        return [t for t in agent.toolsets if isinstance(t, MCPServer)]

    @staticmethod
    def _find(agent: ChatAgent, name: str) -> MCPServer:
        for t in agent.toolsets:
            if isinstance(t, MCPServer) and t.name == name:
                return t
        known = ", ".join(t.name for t in agent.toolsets if isinstance(t, MCPServer)) or "none"
        raise UsageError(f"{agent.name} has no MCP server {name!r} (it has: {known})")

    def _agent_magics(self) -> Any:
        magics = self.shell.magics_manager.registry.get("AgentMagics")
        if magics is None:
            raise UsageError("menglong_magic is not loaded: run %load_ext menglong_magic")
        return magics

    def _agent(self, name: str | None) -> ChatAgent:
        magics = self._agent_magics()
        return named_agent(self.shell.user_ns, name) if name else magics.default_agent()  # type: ignore[no-any-return]
