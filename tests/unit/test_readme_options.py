"""The README's run-option table lists exactly the declared options, in order, with the magics' sources."""

from __future__ import annotations

import re
from pathlib import Path

from menglong_magic.agent.options import RUN_OPTIONS, RunOptions
from menglong_magic.ipython.options import MAGIC_SOURCES

README = Path(__file__).resolve().parents[2] / "README.md"


def table_rows() -> list[list[str]]:
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- run-options-table:.*?-->\n(.*?)<!-- /run-options-table -->", text, re.S)
    assert block, "the README has no run-options table"
    lines = [line for line in block.group(1).strip().splitlines() if line.startswith("|")][2:]  # skip the head
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]


def test_the_readme_table_lists_exactly_the_declared_options() -> None:
    rows = table_rows()
    assert [row[0].strip("`") for row in rows] == list(RUN_OPTIONS) == list(RunOptions.__annotations__)
    for name, _what, magics in rows:
        assert magics == MAGIC_SOURCES[name.strip("`")], name
