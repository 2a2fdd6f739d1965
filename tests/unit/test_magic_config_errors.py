"""Issue #24 (4): a configuration error in a magic (a refused URL, a missing Azure setting, a missing cassette) is
one short UsageError line: no traceback, no "[agent] cancelled" run, no secret."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

SECRET = "pa55-word-0123456789"
CASES = {
    "credentials-in-url": ({"OPENAI_BASE_URL": f"http://user:{SECRET}@127.0.0.1:9/v1"}, "must not contain credentials"),
    "azure-without-endpoint": ({"MENGLONG_MODEL": "azure:my-deployment", "AZURE_OPENAI_API_KEY": SECRET},
                               "azure_endpoint"),
    "missing-cassette": ({"MENGLONG_MODEL": "replay:/nonexistent/cassette.jsonl"}, "cassette"),
}


@pytest.fixture(params=list(CASES))
def broken_shell(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, str]]:
    env, expected = CASES[request.param]
    for name in ("AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_API_KEY", "OPENAI_API_VERSION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    sh = InteractiveShell.instance()
    sh.reset()
    sh.run_line_magic("load_ext", "menglong_magic")
    yield sh, expected
    sh.run_line_magic("unload_ext", "menglong_magic")


def assert_one_line(capsys: pytest.CaptureFixture[str], expected: str) -> None:
    captured = capsys.readouterr()
    shown = captured.out + captured.err
    assert "Traceback" not in shown and "[agent]" not in shown, shown
    lines = [line for line in shown.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("UsageError: agent configuration:"), shown
    assert expected.lower() in lines[0].lower() and SECRET not in shown


@pytest.mark.parametrize("cell", ["%agent_run say hi", "%%agent\nhello", "x = %agent_run say hi"])
async def test_the_awaited_magic_shows_one_line(broken_shell: tuple[Any, str], cell: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    sh, expected = broken_shell
    result = await sh.run_cell_async(cell, store_history=True, transformed_cell=sh.transform_cell(cell))
    assert type(result.error_in_exec).__name__ == "UsageError"
    assert result.error_in_exec.__context__ is None and result.error_in_exec.__cause__ is None
    assert_one_line(capsys, expected)


def test_the_blocking_path_shows_one_line(broken_shell: tuple[Any, str], capsys: pytest.CaptureFixture[str]) -> None:
    sh, expected = broken_shell
    result = sh.run_cell("get_ipython().run_line_magic('agent_run', 'say hi')")  # no await rewrite here
    assert type(result.error_in_exec).__name__ == "UsageError"
    assert result.error_in_exec.__context__ is None
    assert_one_line(capsys, expected)


def test_agent_tools_shows_the_name_sent_to_the_model(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MENGLONG_MODEL", "offline")
    sh = InteractiveShell.instance()
    sh.reset()
    sh.run_line_magic("load_ext", "menglong_magic")
    try:
        sh.run_cell("from menglong_magic import tool\n"
                    "@tool(name='fs.read')\ndef read(path: str) -> str:\n    '''Read a file.'''\n    return path\n"
                    "@tool(name='Wetter abrufen')\ndef wetter(city: str) -> str:\n    '''Weather.'''\n    return city\n"
                    "@tool\ndef plain(x: str) -> str:\n    '''Plain.'''\n    return x\n")
        capsys.readouterr()
        sh.run_line_magic("agent_tools", "")
        out = capsys.readouterr().out
    finally:
        sh.run_line_magic("unload_ext", "menglong_magic")
    assert "fs.read (sync) [sent to the model as 'fs_read']" in out
    assert "Wetter abrufen (sync) [sent to the model as 'Wetter_abrufen']" in out
    assert "plain (sync): Plain." in out
