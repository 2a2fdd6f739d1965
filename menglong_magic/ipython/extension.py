"""``%load_ext menglong_magic``: register the magics and their cell rewriters; ``%unload_ext`` removes them all."""

from __future__ import annotations

from typing import Any

from ..tools.mcp import close_all
from ..ui.frontend import unwatch, watch
from ..ui.live import track_requests, untrack_requests
from . import kernel_status
from .cells import CellMagicRewriter, install_runner, uninstall_runner
from .history_magic import HistoryMagics
from .magics import AgentMagics
from .map_magic import AgentMapMagics
from .mcp_magic import MCPMagics

#: HistoryMagics (%agent_history, %agent_log) runs no agent: no cell of it is rewritten.
_MAGICS: tuple[type, ...] = (AgentMagics, AgentMapMagics, MCPMagics, HistoryMagics)
#: The magics whose cells are rewritten to run on the kernel's loop (%%agent is the cell magic).
_REWRITTEN = ("agent_run", "agent_map", "agent_mcp")


def load_ipython_extension(ipython: Any) -> None:
    """Register every magic once (idempotent), the rewriter that runs them on the kernel's loop and its runner,
    and start noting which front ends speak the widget protocol."""
    for magics_class in _MAGICS:
        if magics_class.__name__ not in ipython.magics_manager.registry:
            ipython.register_magics(magics_class(ipython))
    if not any(isinstance(t, CellMagicRewriter) for t in ipython.input_transformers_cleanup):
        ipython.input_transformers_cleanup.append(CellMagicRewriter(ipython, *_REWRITTEN))
    install_runner(ipython)
    watch(ipython)
    track_requests(ipython)  # a --bg run ending after its cell updates the saved notebook (see ui/live.py)
    kernel_status.install(ipython)  # the status stays "busy" while an agent cell runs (see kernel_status)


def unload_ipython_extension(ipython: Any) -> None:
    """Remove every magic and rewriter, forget ``_agent_last`` and close every MCP server of the process."""
    unwatch(ipython)
    untrack_requests(ipython)
    kernel_status.uninstall(ipython)
    for magics_class in _MAGICS:
        magics = ipython.magics_manager.registry.pop(magics_class.__name__, None)
        if magics is not None:
            for kind, names in magics.magics.items():
                for name in names:
                    ipython.magics_manager.magics[kind].pop(name, None)
    cleanup = ipython.input_transformers_cleanup
    cleanup[:] = [t for t in cleanup if not isinstance(t, CellMagicRewriter)]
    uninstall_runner(ipython)
    ipython.user_ns.pop("_agent_last", None)
    close_all()
