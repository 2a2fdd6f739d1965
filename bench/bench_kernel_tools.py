"""The kernel tools on a 10,000,000-row DataFrame: list_variables and inspect_variable, time and answer size.

Run: python bench/bench_kernel_tools.py   (targets: each under 0.5 s and under 8 KB; best of 5 runs)
Mixed columns (float, int, string categories, a float column with NaNs, timestamps), in an IPython shell's
namespace with a few other variables, as in a notebook.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pandas as pd
from IPython.core.interactiveshell import InteractiveShell

from menglong_magic.ipython.kernel_tools import KernelTools

ROWS = 10_000_000
TIME_TARGET = 0.5
SIZE_TARGET = 8 * 1024


def frame() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    price = rng.random(ROWS) * 100
    price[rng.integers(0, ROWS, ROWS // 20)] = np.nan
    return pd.DataFrame({
        "price": price,
        "units": rng.integers(0, 1000, ROWS),
        "region": pd.Categorical.from_codes(rng.integers(0, 4, ROWS), ["north", "south", "east", "west"]),
        "sku": np.array([f"sku-{i}" for i in range(5000)], dtype=object)[rng.integers(0, 5000, ROWS)],
        "when": pd.date_range("2020-01-01", periods=ROWS, freq="s"),
    })


async def measure(call) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    best, size = float("inf"), 0
    for _ in range(5):
        start = time.perf_counter()
        answer = await call()
        best = min(best, time.perf_counter() - start)
        size = len(answer.encode())
    return best, size


async def main() -> bool:
    shell = InteractiveShell.instance()
    built = time.perf_counter()
    shell.user_ns.update(sales=frame(), threshold=0.25, regions=["north", "south"], api_key="sk-bench-000000")
    print(f"built a {ROWS:,}-row DataFrame with 5 columns in {time.perf_counter() - built:.1f}s "
          f"({shell.user_ns['sales'].memory_usage(deep=False).sum() / 1e6:.0f} MB)")
    tools = KernelTools(shell)
    ok = True
    for label, call in (("list_variables", tools.list_variables),
                        ("inspect_variable('sales')", lambda: tools.inspect_variable("sales"))):
        seconds, size = await measure(call)
        passed = seconds < TIME_TARGET and size < SIZE_TARGET
        ok &= passed
        print(f"{label:28s} {seconds * 1000:7.1f} ms  {size:6,d} bytes  "
              f"(targets < {TIME_TARGET * 1000:.0f} ms, < {SIZE_TARGET:,d} bytes) {'ok' if passed else 'MISSED'}")
    print("\ninspect_variable('sales') answers:\n" + await tools.inspect_variable("sales"))
    return ok


if __name__ == "__main__":
    raise SystemExit(0 if asyncio.run(main()) else 1)
