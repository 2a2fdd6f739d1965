"""A map whose journal another process keeps locked, in a real ipykernel: no answer lost, the cell returns."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from menglong_magic.maps.run import Journal
from menglong_magic.testing import ScriptedOpenAIServer, reply

pytestmark = pytest.mark.kernel

LOCKER = textwrap.dedent("""
    import sqlite3, sys, time
    db = sqlite3.connect(sys.argv[1], isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    db.execute("COMMIT")
""")


def answers_in(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return sorted(json.loads(row[0]) for row in db.execute("SELECT output FROM items WHERE error IS NULL"))


def test_a_map_completes_while_another_process_holds_the_journal_lock(kernel, tmp_path: Path) -> None:
    journal = tmp_path / "runs.sqlite"
    Journal(journal).close()
    items = [f"item {i}" for i in range(6)]
    expected = [f"answer to {text}" for text in items]
    with ScriptedOpenAIServer(responder=lambda body: reply(f"answer to {body['messages'][-1]['content']}",
                                                           delay=0.05)) as server:
        kernel.ok("%load_ext menglong_magic\n"
                  "from menglong_magic import ChatAgent\n"
                  "from menglong_magic.models import OpenAIModel\n"
                  f"bot = ChatAgent(model=OpenAIModel('m', base_url={server.base_url!r}, api_key='sk-kernel'))\n"
                  f"items = {items!r}")
        (tmp_path / "locker.py").write_text(LOCKER)
        locker = subprocess.Popen([sys.executable, str(tmp_path / "locker.py"), str(journal), "8"],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
            t = time.monotonic()
            cell = kernel.ok(f"result = %agent_map -a bot -q --journal {journal} items", timeout=120)
            took = time.monotonic() - t
            assert locker.poll() is None, "the lock was gone before the map ended: nothing was tested"
            assert took < 7.5, took  # the cell did not wait for the lock
            assert cell.reply is not None and cell.reply["content"]["status"] == "ok"
            assert cell.stderr.count("JournalUnavailableWarning") == 1, cell.stderr  # warned once
            assert "sk-kernel" not in cell.stderr
            out = kernel.ok("import json\nprint(json.dumps([list(result), len(result.errors)]))")
            answers, failed = json.loads(out.stdout.splitlines()[-1])
            assert answers == expected and failed == 0  # every paid answer is in the result
            assert answers_in(journal) == []  # not written yet: the lock is still held
            assert locker.wait(timeout=60) == 0
        finally:
            if locker.poll() is None:
                locker.kill()
        deadline = time.monotonic() + 60
        while answers_in(journal) != expected:  # the kernel's journal writer writes them once it is free
            assert time.monotonic() < deadline, answers_in(journal)
            time.sleep(0.1)
        # The kernel is still fine, and a re-run asks nothing: everything is in the journal now.
        asked = len(server.requests)
        out = kernel.ok(f"again = %agent_map -a bot -q --journal {journal} items\n"
                        "print(json.dumps([list(again), again.restored]))")
        assert json.loads(out.stdout.splitlines()[-1]) == [expected, len(items)]
        assert len(server.requests) == asked
