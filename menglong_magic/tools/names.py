"""Names the chat API constrains (tool names, the ``response_format`` schema name): ``^[a-zA-Z0-9_-]{1,64}$``.

Tools come from anywhere (MCP servers name them ``fs.read`` or ``Wetter abrufen``, ``@tool(name=...)``, clash
prefixes built from a server's name); the API rejects the whole request for one bad name. :func:`api_name`
gives the name sent for an original one; the run's tool table keeps the mapping both ways.
"""

from __future__ import annotations

import hashlib
import re

#: What the OpenAI chat API (and the servers that copy it) accepts as a function or schema name.
API_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]+")
_MAX = 64


def api_name(name: str, taken: set[str] | frozenset[str] = frozenset(), fallback: str = "tool") -> str:
    """``name`` as the API accepts it (unchanged when it already does), distinct from every name in ``taken``.

    Other characters become ``_`` (``fs.read`` → ``fs_read``); a name too long, or taken by another tool, gets a
    short hash of the original instead, so two originals never share an API name.
    """
    if API_NAME.match(name) and name not in taken:
        return name
    base = _UNSAFE.sub("_", name).strip("_") or fallback
    if base != name or len(base) > _MAX or base in taken:
        digest = hashlib.sha1(name.encode("utf-8", "surrogatepass")).hexdigest()
        candidate = base if (len(base) <= _MAX and base not in taken) else ""
        for size in (6, 10, 16, 40):
            if candidate:
                break
            suffix = "_" + digest[:size]
            attempt = base[: _MAX - len(suffix)] + suffix
            if attempt not in taken:
                candidate = attempt
        base = candidate or (base[: _MAX - 41] + "_" + digest)
    return base
