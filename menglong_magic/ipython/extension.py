"""``%load_ext menglong_magic``: register the magics and their cell rewriters; ``%unload_ext`` removes them all."""

from __future__ import annotations

from typing import Any

from ..tools.mcp import close_all
from ..ui.frontend import unwatch, watch
from . import kernel_status
from .magics import AgentMagics, AwaitRewriter
from .map_magic import AgentMapMagics, MapRewriter
from .mcp_magic import MCPMagics, MCPRewriter

# Each magics class with the input transformer that runs its magic on the kernel's loop.
_PARTS: tuple[tuple[type, type], ...] = (
    (AgentMagics, AwaitRewriter),  # %%agent, %agent_run, %agent_reset, %agent_tools
    (AgentMapMagics, MapRewriter),  # %agent_map
    (MCPMagics, MCPRewriter),  # %agent_mcp
)


def load_ipython_extension(ipython: Any) -> None:
    """Register every magic once (idempotent) and start noting which front ends speak the widget protocol."""
    for magics_class, rewriter_class in _PARTS:
        if magics_class.__name__ in ipython.magics_manager.registry:
            continue
        ipython.register_magics(magics_class(ipython))
        ipython.input_transformers_cleanup.append(rewriter_class(ipython))
    watch(ipython)
    kernel_status.install(ipython)  # the status stays "busy" while an agent cell runs (see kernel_status)


def unload_ipython_extension(ipython: Any) -> None:
    """Remove every magic and rewriter, forget ``_agent_last`` and close every MCP server of the process."""
    unwatch(ipython)
    kernel_status.uninstall(ipython)
    for magics_class, rewriter_class in _PARTS:
        magics = ipython.magics_manager.registry.pop(magics_class.__name__, None)
        if magics is not None:
            for kind, names in magics.magics.items():
                for name in names:
                    ipython.magics_manager.magics[kind].pop(name, None)
        cleanup = ipython.input_transformers_cleanup
        cleanup[:] = [t for t in cleanup if not isinstance(t, rewriter_class)]
    ipython.user_ns.pop("_agent_last", None)
    close_all()
