"""Issue #24 (4): a finished panel frees what it held. Kernel RSS stays flat over 300 ``%agent_run`` cells shown
*with the panel* (``%config AgentMagics.frontend = "widgets"``: a plain jupyter_client otherwise gets the text view).

Before the fix every PanelWidget stayed alive through anywidget's class-level file watcher (manzt/anywidget#929):
~32 KB per run, 300 runs: RSS 102 → 111 MB.
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
PROBE = """
import gc as _gc, json as _j, os as _o
from menglong_magic.ui.panel import PanelWidget as _P
_gc.collect()
print(_j.dumps({"panels": sum(isinstance(_x, _P) for _x in _gc.get_objects()),
                "rss": int(open('/proc/self/statm').read().split()[1]) * _o.sysconf('SC_PAGE_SIZE')}))
"""


def probe(kernel: Kernel) -> dict[str, int]:
    return json.loads(kernel.ok(PROBE).stdout.strip().splitlines()[-1])


def test_rss_stays_flat_over_300_runs_with_the_panel(kernel: Kernel) -> None:
    kernel.ok(SETUP)
    for _ in range(20):  # imports, caches and allocator arenas settle into the baseline
        first = kernel.ok(RUN, timeout=120)
    assert first.data("application/vnd.jupyter.widget-view+json"), "the panel was not shown"
    before = probe(kernel)
    for _ in range(300):
        kernel.ok(RUN, timeout=120)
    after = probe(kernel)
    growth_mb = (after["rss"] - before["rss"]) / 1e6
    print(f"300 panel runs: RSS {before['rss'] / 1e6:.1f} → {after['rss'] / 1e6:.1f} MB "
          f"({growth_mb * 1e3 / 300:.1f} KB/run); live PanelWidgets {before['panels']} → {after['panels']}",
          file=sys.stderr)
    assert after["panels"] <= before["panels"] + 1  # the last run's panel at most
    assert growth_mb < 4.5, f"RSS grew {growth_mb:.1f} MB over 300 panel runs"
