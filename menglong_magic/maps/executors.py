"""Map executors by name: ``"local"`` (the running loop) or ``"ray"`` (Ray workers), or an executor object.

Above both :mod:`.run` and :mod:`.ray` (the Ray executor builds on the map's jobs), so neither imports the other's
user: no import cycle.
"""

from __future__ import annotations

from typing import Any

from .run import MapExecutor, local_or_given


def resolve_executor(executor: Any) -> MapExecutor:
    """``"local"``/None, ``"ray"`` (a :class:`~menglong_magic.maps.ray.RayExecutor` with its defaults) or an
    executor object."""
    if executor == "ray":
        from .ray import default_executor  # Ray is optional: imported when asked for

        return default_executor()
    return local_or_given(executor)
