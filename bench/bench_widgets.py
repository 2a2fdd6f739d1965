"""Live widget models and RSS of one real kernel over 1,000 ``%agent_run`` cells with the panel (offline model).

Each run shows the live panel (one anywidget: ``%config AgentMagics.frontend = "widgets"``, since a plain
jupyter_client otherwise gets the text view) and then its final view; a finished run must hold no widget model
and no panel in the kernel, so all three figures should stay flat. The kernel is a real ipykernel driven over
ZMQ by jupyter_client, with no front end attached (comm messages go out on IOPub and are drained here).

Run: python bench/bench_widgets.py [--runs 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import time

from jupyter_client.manager import start_new_kernel

# Panels still alive are counted through a WeakSet filled at construction (gc.get_objects() in the kernel would
# itself double the kernel's objects and RSS).
TRACK = (
    "import weakref as _wr\n"
    "from menglong_magic.ui.panel import PanelWidget as _P\n"
    "_live_panels = _wr.WeakSet()\n"
    "_panel_init = _P.__init__\n"
    "def _tracked_init(self, *a, **k):\n"
    "    _panel_init(self, *a, **k)\n"
    "    _live_panels.add(self)\n"
    "_P.__init__ = _tracked_init\n"
)
PROBE = (
    "import gc as _gc, json as _j, os as _o\n"
    "from ipywidgets.widgets import widget as _w\n"
    "_gc.collect()\n"
    "_rss = int(open('/proc/self/statm').read().split()[1]) * _o.sysconf('SC_PAGE_SIZE')\n"
    "print(_j.dumps({'widgets': len(_w._instances), 'panels': len(_live_panels), 'rss': _rss}))"
)
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def run_cell(kc, code: str, timeout: float = 120, views: list[dict] | None = None) -> tuple[dict, list[str]]:
    out: list[str] = []

    def hook(msg: dict) -> None:
        if views is not None and WIDGET_VIEW in msg["content"].get("data", {}):
            views.append(msg["content"]["data"][WIDGET_VIEW])
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            out.append("\n".join(msg["content"]["traceback"]))

    reply = kc.execute_interactive(code, output_hook=hook, timeout=timeout)
    return reply["content"], out


def probe(kc) -> dict:
    reply, out = run_cell(kc, PROBE)
    assert reply["status"] == "ok", out
    return json.loads("".join(out).strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1000)
    args = parser.parse_args()
    checkpoints = sorted({0, args.runs // 2, args.runs})
    env = {**os.environ, "MENGLONG_MODEL": "offline"}
    km, kc = start_new_kernel(kernel_name="python3", env=env)
    try:
        reply, out = run_cell(kc, "%load_ext menglong_magic\n%config AgentMagics.model = 'offline'\n"
                                  "%config AgentMagics.frontend = 'widgets'\n" + TRACK +
                                  "from menglong_magic import tool\n"
                                  "@tool\ndef lookup(city: str) -> str:\n"
                                  "    '''Look a city up.'''\n    return f'{city}: sunny'\n")
        assert reply["status"] == "ok", out
        # A first run so that imports and caches are in the baseline; it must really show the panel.
        views: list[dict] = []
        reply, out = run_cell(kc, "%agent_run --reset look up 'Paris'", views=views)
        assert reply["status"] == "ok", out
        assert views, "the run did not show the panel (widget view)"
        rows = []
        started = time.perf_counter()
        done = 0
        for target in checkpoints:
            while done < target:
                reply, out = run_cell(kc, "%agent_run --reset look up 'Paris'")
                assert reply["status"] == "ok", out
                done += 1
            p = probe(kc)
            rows.append((done, p["widgets"], p["panels"], p["rss"], time.perf_counter() - started))
        print(f"{args.runs} %agent_run cells with the panel in one kernel (offline model, one tool call + answer):")
        print(f"{'runs':>6} {'live widget models':>20} {'live panels':>12} {'RSS (MB)':>10} {'elapsed (s)':>12}")
        for n, widgets, panels, rss, elapsed in rows:
            print(f"{n:>6} {widgets:>20} {panels:>12} {rss / 1e6:>10.1f} {elapsed:>12.1f}")
        (n0, w0, _, r0, _), (n1, w1, _, r1, _) = rows[0], rows[-1]
        if n1 > n0:
            per_run = n1 - n0
            print(f"growth per run: {(w1 - w0) / per_run:.3f} widget models, {(r1 - r0) / per_run / 1e3:.1f} KB RSS")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


if __name__ == "__main__":
    main()
