"""Maps: one isolated run per input, in parallel, with a journal; executed locally or on Ray workers."""

from .run import ItemOutcome, MapExecutor, MapItem, MapItemError, MapItemsRestored, MapJob, MapResult, map_async

__all__ = [
    "ItemOutcome",
    "MapExecutor",
    "MapItem",
    "MapItemError",
    "MapItemsRestored",
    "MapJob",
    "MapResult",
    "map_async",
]
