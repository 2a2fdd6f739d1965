"""Issue #24 (4): a finished panel frees what it held. Kernel RSS stays flat over 300 ``%agent_run`` cells shown
*with the panel* (``%config AgentMagics.frontend = "widgets"``: a plain jupyter_client otherwise gets the text view).

Before the fix every PanelWidget stayed alive through anywidget's class-level file watcher (manzt/anywidget#929):
bench/bench_widgets.py measured 92.4 → 108.9 → 125.7 MB at 0/500/1000 runs (33 KB/run, 1001 live panels); after:
92.7 → 93.3 → 93.5 MB (0.8 KB/run, 0 live panels). This test: 92.8 → 93.0 MB over 300 runs.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

pytestmark = pytest.mark.kernel

Kernel = Any

SETUP = """
%load_ext menglong_magic
%config AgentMagics.frontend = "widgets"
from menglong_magic import tool

@tool
def lookup(city: str) -> str:
    \"\"\"Look a city up.\"\"\"
    return f"{city}: sunny"
"""
RUN = "%agent_run --reset look up 'Paris'"
# Panels still alive are counted through a WeakSet filled at construction (gc.get_objects() in the kernel would
# itself double the kernel's objects and RSS).
TRACK = """
import weakref as _wr
from menglong_magic.ui.panel import PanelWidget as _P
_live_panels = _wr.WeakSet()
_panel_init = _P.__init__
def _tracked_init(self, *a, **k):
    _panel_init(self, *a, **k)
    _live_panels.add(self)
_P.__init__ = _tracked_init
"""
PROBE = """
import gc as _gc, json as _j, os as _o
_gc.collect()
print(_j.dumps({"panels": len(_live_panels),
                "rss": int(open('/proc/self/statm').read().split()[1]) * _o.sysconf('SC_PAGE_SIZE')}))
"""


def probe(kernel: Kernel) -> dict[str, int]:
    return json.loads(kernel.ok(PROBE).stdout.strip().splitlines()[-1])


def test_rss_stays_flat_over_300_runs_with_the_panel(kernel: Kernel) -> None:
    kernel.ok(SETUP)
    kernel.ok(TRACK)
    for _ in range(30):  # imports and caches settle into the baseline
        first = kernel.ok(RUN, timeout=120)
    assert first.data("application/vnd.jupyter.widget-view+json"), "the panel was not shown"
    points = [probe(kernel)]
    for _ in range(3):
        for _ in range(100):
            kernel.ok(RUN, timeout=120)
        points.append(probe(kernel))
    mb = [p["rss"] / 1e6 for p in points]
    growth = mb[3] - mb[0]
    print(f"RSS after 30 warm-up runs, then 100/200/300 panel runs: {' → '.join(f'{m:.1f}' for m in mb)} MB "
          f"({growth * 1e3 / 300:.1f} KB/run); live PanelWidgets {' → '.join(str(p['panels']) for p in points)}",
          file=sys.stderr)
    assert all(p["panels"] <= points[0]["panels"] + 1 for p in points)  # the last run's panel at most
    assert growth < 3.0, f"RSS grew {growth:.1f} MB over 300 panel runs"
