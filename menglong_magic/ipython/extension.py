"""``%load_ext menglong_magic``: register the magics and their cell rewriters; ``%unload_ext`` removes them all."""

from __future__ import annotations

from typing import Any

from ..tools.mcp import close_all
from ..ui.frontend import unwatch, watch
from .history_magic import HistoryMagics
from .magics import AgentMagics, AwaitRewriter
from .map_magic import AgentMapMagics, MapRewriter
from .mcp_magic import MCPMagics, MCPRewriter

# Each magics class with the input transformer that runs its magic on the kernel's loop (None: plain magics).
_PARTS: tuple[tuple[type, type | None], ...] = (
    (AgentMagics, AwaitRewriter),  # %%agent, %agent_run, %agent_reset, %agent_tools
    (AgentMapMagics, MapRewriter),  # %agent_map
    (MCPMagics, MCPRewriter),  # %agent_mcp
    (HistoryMagics, None),  # %agent_history, %agent_log
)


def load_ipython_extension(ipython: Any) -> None:
    """Register every magic once (idempotent) and start noting which front ends speak the widget protocol."""
    for magics_class, rewriter_class in _PARTS:
        if magics_class.__name__ in ipython.magics_manager.registry:
            continue
        ipython.register_magics(magics_class(ipython))
        if rewriter_class is not None:
            ipython.input_transformers_cleanup.append(rewriter_class(ipython))
    watch(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """Remove every magic and rewriter, forget ``_agent_last`` and close every MCP server of the process."""
    unwatch(ipython)
    for magics_class, rewriter_class in _PARTS:
        magics = ipython.magics_manager.registry.pop(magics_class.__name__, None)
        if magics is not None:
            for kind, names in magics.magics.items():
                for name in names:
                    ipython.magics_manager.magics[kind].pop(name, None)
        if rewriter_class is not None:
            cleanup = ipython.input_transformers_cleanup
            cleanup[:] = [t for t in cleanup if not isinstance(t, rewriter_class)]
    ipython.user_ns.pop("_agent_last", None)
    close_all()
