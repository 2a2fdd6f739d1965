"""The magics in an in-process IPython shell (no widget front end: the text view is used)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

from menglong_magic.ipython.cells import CellMagicRewriter, MagicRunner
from menglong_magic.ipython.magics import AgentMagics


@pytest.fixture
def shell(monkeypatch: pytest.MonkeyPatch) -> Iterator[InteractiveShell]:
    monkeypatch.setenv("MENGLONG_MODEL", "offline")
    sh = InteractiveShell.instance()
    sh.reset()
    sh.run_line_magic("load_ext", "menglong_magic")
    sh.run_cell("from menglong_magic import ChatAgent, tool\n"
                "from menglong_magic.models import ScriptedModel, reply, calls, call")
    yield sh
    sh.run_line_magic("unload_ext", "menglong_magic")


async def run(sh: InteractiveShell, code: str) -> Any:
    """Run a cell the way a kernel does: transformed, then as a coroutine when it awaits."""
    result = await sh.run_cell_async(code, store_history=True, transformed_cell=sh.transform_cell(code))
    return result


async def test_cell_chat_returns_a_result_and_uses_the_kernel_loop(shell: InteractiveShell,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    res = await run(shell, "%%agent\nhello there")
    assert res.error_in_exec is None
    assert res.result is None  # no Out[n] repeating the answer: the view shows it once
    last = shell.user_ns["_agent_last"]
    assert last.final_output.startswith("Offline demo model here. You said: \"hello there\"")
    out = capsys.readouterr().out
    assert "[agent] completed" in out  # the text view in a terminal shell
    assert out.count("You said") == 1  # the answer, once


async def test_line_magic_assignment_out_and_trailing_semicolon(shell: InteractiveShell) -> None:
    res = await run(shell, "r = %agent_run -o kept -q count things")
    assert res.error_in_exec is None
    assert shell.user_ns["r"] is shell.user_ns["kept"]
    assert shell.user_ns["r"]["task_completed"] is True
    silent = await run(shell, "%agent_run -q quietly;")
    assert silent.result is None


async def test_default_agent_gets_namespace_tools_and_t_selects(shell: InteractiveShell) -> None:
    await run(shell, "@tool\ndef alpha(x: str) -> str:\n    return 'A' + x\n\n"
                     "@tool\nasync def beta(x: str) -> str:\n    return 'B' + x\n\ndef plain(x: str) -> str:\n"
                     "    return 'P' + x")
    await run(shell, "%agent_run -q use tools")
    assert sorted(c.name for c in shell.user_ns['_agent_last'].tool_calls) == ["alpha", "beta"]
    await run(shell, "%agent_run -q -t plain,beta only some")
    assert sorted(c.name for c in shell.user_ns['_agent_last'].tool_calls) == ["beta", "plain"]


async def test_named_agent_reset_and_history(shell: InteractiveShell) -> None:
    await run(shell, "bot = ChatAgent(model=ScriptedModel(['one', 'two', 'three']))")
    await run(shell, "%%agent -a bot -q\nfirst")
    await run(shell, "%%agent -a bot -q\nsecond")
    assert len(shell.user_ns["bot"].messages) == 4
    await run(shell, "%%agent -a bot -q --reset\nthird")
    assert [m["content"] for m in shell.user_ns["bot"].messages] == ["third", "three"]


async def test_options_line_expands_and_body_interpolates_only_on_request(shell: InteractiveShell) -> None:
    await run(shell, "bot = ChatAgent(model=ScriptedModel([lambda r: r.messages[-1]['content']] * 3))\n"
                     "name = 'bot'\ncity = 'Oslo'")
    res = await run(shell, "%%agent -a $name -q\nweather in {city}")
    assert shell.user_ns['_agent_last'].final_output == "weather in {city}"  # verbatim by default
    res = await run(shell, "%%agent -a {name} -q -i\nweather in {city} {{literal}}")
    assert shell.user_ns['_agent_last'].final_output == "weather in Oslo {literal}"
    res = await run(shell, "%%agent -a bot -q -i\n{missing}")
    assert "missing" in str(res.error_in_exec)


@pytest.mark.parametrize(("code", "message"), [
    ("%agent_run --bogus x", "unrecognized option --bogus"),
    ("%agent_run -a nobody task", "no such variable"),
    ("x = 3\n%agent_run -a x task", "not a ChatAgent"),
    ("%agent_run -t nothere task", "not a function"),
    ("%agent_run -q", "needs a task"),
    ("%%agent --batch --sequential\na", "choose one"),
    ("%%agent\n   ", "needs a message"),
    ("%agent_run --api-key sk-123 task", "unrecognized option --api-key"),
])
async def test_usage_errors_are_short(shell: InteractiveShell, code: str, message: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    res = await run(shell, code)
    assert type(res.error_in_exec).__name__ == "UsageError"
    assert message in str(res.error_in_exec)
    assert "Traceback" not in capsys.readouterr().err


async def test_batch_and_sequential(shell: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    await run(shell, "bot = ChatAgent(model=ScriptedModel([lambda r: f\"{len(r.messages)}\"] * 5))")
    await run(shell, "%%agent -a bot --batch\none\n\ntwo\nthree")
    assert [r.final_output for r in shell.user_ns['_agent_last']] == ["1", "1", "1"]  # own history copies
    assert shell.user_ns["bot"].messages == []
    assert "batch of 3: 3 done, 0 failed" in capsys.readouterr().out
    await run(shell, "%%agent -a bot -q --sequential\nfirst\nsecond")
    assert [r.final_output for r in shell.user_ns['_agent_last']] == ["1", "3"]  # the second sees the first exchange


async def test_config_traits_set_defaults(shell: InteractiveShell) -> None:
    shell.run_line_magic("config", "AgentMagics.max_iterations = 1")
    shell.run_line_magic("config", "AgentMagics.system = 'be brief'")
    await run(shell, "@tool\ndef alpha(x: str) -> str:\n    return x")
    await run(shell, "%agent_run -q capped")
    assert shell.user_ns['_agent_last'].stop_reason == "max_iterations"
    magics = shell.magics_manager.registry["AgentMagics"]
    assert magics.default_agent().system is None  # the config is this run's setting, not written to the agent
    from menglong_magic.models import ScriptedModel

    scripted = magics.default_agent().model = ScriptedModel(["ok"])
    await run(shell, "%agent_run -q brief please")
    assert scripted.requests[0].messages[0] == {"role": "system", "content": "be brief"}
    assert shell.user_ns['_agent_last'].iterations_used == 1
    shell.run_line_magic("config", "AgentMagics.max_iterations = 10")
    shell.run_line_magic("config", "AgentMagics.system = None")


async def test_model_failure_is_a_short_error_with_partial_result(shell: InteractiveShell) -> None:
    await run(shell, "bot = ChatAgent(model=ScriptedModel([RuntimeError('backend down')]))")
    res = await run(shell, "%%agent -a bot -q -o partial\nhi")
    err = res.error_in_exec
    assert type(err).__name__ == "AgentRunFailed"
    assert err._render_traceback_()[-1] == "the partial result is in `partial`"
    assert shell.user_ns["partial"].stop_reason == "error"


def test_fallback_without_a_running_loop(shell: InteractiveShell) -> None:
    """run_line_magic from code, outside any loop (plain terminal): the agent's own loop is used."""
    result = shell.run_line_magic("agent_run", "-q from code")
    assert result.stop_reason == "completed"
    shell.run_line_magic("autoawait", "False")
    try:
        res = shell.run_cell("r = %agent_run -q autoawait off")
        assert res.error_in_exec is None and shell.user_ns["r"].task_completed
    finally:
        shell.run_line_magic("autoawait", "True")


def test_load_is_idempotent_and_unload_removes_everything(shell: InteractiveShell) -> None:
    from menglong_magic import load_ipython_extension

    load_ipython_extension(shell)
    assert sum(isinstance(t, CellMagicRewriter) for t in shell.input_transformers_cleanup) == 1
    shell.run_line_magic("unload_ext", "menglong_magic")
    assert not any(isinstance(t, CellMagicRewriter) for t in shell.input_transformers_cleanup)
    assert "agent_run" not in shell.magics_manager.magics["line"]
    assert "agent" not in shell.magics_manager.magics["cell"]
    assert "AgentMagics" not in shell.magics_manager.registry
    shell.run_line_magic("load_ext", "menglong_magic")
    shell.run_line_magic("reload_ext", "menglong_magic")
    assert sum(isinstance(t, CellMagicRewriter) for t in shell.input_transformers_cleanup) == 1


def test_help_lists_the_options(shell: InteractiveShell) -> None:
    doc = AgentMagics.agent.__doc__ or ""
    for option in ("--agent", "--model", "--tools", "--bg", "--batch", "--interpolate", "--out"):
        assert option in doc


def test_rewriter_only_touches_our_magics(shell: InteractiveShell) -> None:
    rw = CellMagicRewriter(shell, "agent_run", "agent_map")
    # No running loop here (as in terminal IPython): the blocking form; bare statements give no value. The call
    # goes to one runner object in the hidden namespace, never to a function named inside a string.
    assert rw(["%%agent -q\n", "hi\n"]) == ["_menglong_magic.blocking('agent', '-q', 'hi', value=False)\n"]
    assert rw(["%agent_run x\n"]) == ["_menglong_magic.blocking('agent_run', 'x', value=False)\n"]
    assert rw(["%agent_map xs {text}\n"]) == ["_menglong_magic.blocking('agent_map', 'xs {text}', value=False)\n"]
    assert isinstance(shell.user_ns["_menglong_magic"], MagicRunner)
    assert "_menglong_magic" in shell.user_ns_hidden  # not listed by %who
    assert rw(["  %agent_run x\n"]) == ["  %agent_run x\n"]  # indented: left to the fallback
    assert rw(["%agent_runner x\n"]) == ["%agent_runner x\n"]
    assert rw(["%%agentx\n"]) == ["%%agentx\n"]
    out = rw(["y = %agent_run -q a b;\n"])
    assert out[0].startswith("y = _menglong_magic.blocking(") and out[0].rstrip().endswith(";")
    assert shell.check_complete("%%agent\n")[0] == "incomplete"  # Enter continues the cell
    assert shell.check_complete("%%agent\nhello\n")[0] == "incomplete"
    assert shell.check_complete("%%agent\nhello\n\n")[0] == "complete"


async def test_rewriter_awaits_inside_a_running_loop(shell: InteractiveShell) -> None:
    rw = CellMagicRewriter(shell, "agent_run")
    assert rw(["%%agent -q\n", "hi\n"]) == ["await _menglong_magic.run('agent', '-q', 'hi', value=False)\n"]
    out = rw(["y = %agent_run -q a b\n"])
    assert out[0].startswith("y = await ") and not out[0].rstrip().endswith(";")


async def test_task_text_reaches_the_model_as_typed(shell: InteractiveShell) -> None:
    await run(shell, "bot = ChatAgent(model=ScriptedModel([lambda r: r.messages[-1]['content']] * 3))")
    await run(shell, "%agent_run -a bot -q How many words are in 'to be or not to be'?")
    assert shell.user_ns["_agent_last"].final_output == "How many words are in 'to be or not to be'?"
    await run(shell, "%agent_run -q -a bot -- -x is   not an option")
    assert shell.user_ns["_agent_last"].final_output == "-x is   not an option"
    await run(shell, "%agent_run --max-iterations=2 -a bot What's \"this\"")
    assert shell.user_ns["_agent_last"].final_output == "What's \"this\""


async def test_overrides_never_change_the_agent(shell: InteractiveShell) -> None:
    await run(shell, "bot = ChatAgent(model=ScriptedModel([lambda r: r.messages[0]['content']] * 3), "
                     "system='original', name='bot')\n"
                     "@tool\ndef alpha(x: str) -> str:\n    return x")
    await run(shell, "%agent_run -a bot -q -s override -t alpha -m offline task")
    assert shell.user_ns["_agent_last"].model == "offline"
    await run(shell, "%%agent -a bot -q -s override -t alpha --mode auto\nhello")
    assert shell.user_ns["_agent_last"].final_output == "override"
    bot = shell.user_ns["bot"]
    assert bot.system == "original" and bot.tools == {} and bot.mode.value == "normal"
    assert type(bot.model).__name__ == "ScriptedModel"


async def test_workflow_mode_cell_runs_the_steps(shell: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    await run(shell, "wf = ChatAgent(model=ScriptedModel([]), mode='workflow')\n"
                     "_ = wf.add_workflow_step('up', str.upper)")
    res = await run(shell, "%%agent -a wf\nhello")
    assert shell.user_ns['_agent_last'].output == "HELLO"
    out = capsys.readouterr().out
    assert "step up ok" in out and "workflow of 1: 1 done" in out
    res = await run(shell, "%%agent --mode workflow\nhello")
    assert "no steps" in str(res.error_in_exec)


async def test_output_type_from_the_namespace(shell: InteractiveShell) -> None:
    await run(shell, "import pydantic\nclass City(pydantic.BaseModel):\n    name: str\n    population: int\n"
                     "bot = ChatAgent(model=ScriptedModel(['{\"name\": \"Oslo\", \"population\": 700000}', "
                     "'{\"result\": [\"a\", \"b\"]}']))")
    await run(shell, "%agent_run -a bot -q --output City -o city Oslo?")
    assert shell.user_ns["city"].output == shell.user_ns["City"](name="Oslo", population=700000)
    await run(shell, "%agent_run -a bot -q --output list[str] -o letters two letters")
    assert shell.user_ns["letters"].output == ["a", "b"]
    res = await run(shell, "%agent_run -a bot -q --output Nowhere task")
    assert type(res.error_in_exec).__name__ == "UsageError" and "Nowhere" in str(res.error_in_exec)
    res = await run(shell, "%agent_run -a bot -q --output bot task")
    assert type(res.error_in_exec).__name__ == "UsageError"


async def test_agent_map_magic_with_a_journal_and_a_dataframe(shell: InteractiveShell, tmp_path: Any) -> None:
    journal = tmp_path / "runs.sqlite"
    await run(shell, "import pandas as pd\n"
                     "echo = ScriptedModel([lambda r: r.messages[-1]['content'].upper()] * 5)\n"
                     "bot = ChatAgent(model=echo)\n"
                     "reviews = pd.DataFrame({'text': ['good film', 'bad plot', 'good film']})")
    res = await run(shell, f"%agent_map -a bot -q -o labels --journal {journal} reviews Sentiment of: {{text}}")
    assert res.error_in_exec is None and res.result is None  # the view shows it; no Out[n]
    labels = shell.user_ns["labels"]
    assert list(labels) == ["SENTIMENT OF: GOOD FILM", "SENTIMENT OF: BAD PLOT", "SENTIMENT OF: GOOD FILM"]
    assert len(shell.user_ns["echo"].requests) == 2  # the repeated prompt was asked once
    await run(shell, f"again = %agent_map -a bot -q --journal {journal} reviews Sentiment of: {{text}}")
    assert list(shell.user_ns["again"]) == list(labels)
    assert len(shell.user_ns["echo"].requests) == 2  # everything came from the journal
    res = await run(shell, "%agent_map -a bot nothing_here Classify: {text}")
    assert type(res.error_in_exec).__name__ == "UsageError"


async def test_usage_errors_for_a_map_field_and_a_missing_cassette(shell: InteractiveShell) -> None:
    await run(shell, "rows = [{'text': 'a'}]\nbot = ChatAgent(model=ScriptedModel([]))")
    res = await run(shell, "%agent_map -a bot -q rows Classify: {nofield}")
    assert type(res.error_in_exec).__name__ == "UsageError" and "nofield" in str(res.error_in_exec)
    res = await run(shell, "%agent_run -q -m replay:no-such-file.jsonl task")
    assert type(res.error_in_exec).__name__ == "UsageError" and "no-such-file" in str(res.error_in_exec)


async def test_plain_chat_re_asks_for_a_typed_answer(shell: InteractiveShell) -> None:
    await run(shell, "import pydantic\nclass City(pydantic.BaseModel):\n    name: str\n"
                     "bot = ChatAgent(model=ScriptedModel(['not json', '{\"name\": \"Oslo\"}']))")
    await run(shell, "%%agent -a bot -q --mode normal --output City -o city\nOslo?")
    assert shell.user_ns["city"].output == shell.user_ns["City"](name="Oslo")
    assert shell.user_ns["city"].iterations_used == 2


@pytest.mark.parametrize("code", [
    "%%agent --help\nignored", "%agent_run --help", "%agent_run -h", "%agent_map --help", "%agent_map -h",
    "%agent_mcp --help", "%agent_reset --help", "%agent_tools -h", "%agent_history --help", "%agent_log --help",
    "x = %agent_run --help", "await_me = 1\n%agent_map --help",
])
async def test_every_magic_prints_its_help_for_h_and_help(shell: InteractiveShell, code: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    name = code.split("%")[-1].split()[0].lstrip("%")
    res = await run(shell, code)
    out = capsys.readouterr().out
    assert res.error_in_exec is None
    assert out.startswith(f"%{name} "), out  # the usage line (without reST's "::"), then the options
    assert "``" not in out
    assert "<{" not in out  # IPython's formatter wraps an option's choices in <{...}>: named MODE instead
    assert "options:" in out or "optional arguments:" in out, out  # (argparse's heading before Python 3.10)
    assert "_agent_last" not in shell.user_ns  # nothing ran


async def test_help_after_options_or_as_text_is_not_help(shell: InteractiveShell) -> None:
    res = await run(shell, "%agent_run -q -- -h is a flag")  # text that starts with '-' goes after --
    assert res.error_in_exec is None
    assert "-h is a flag" in shell.user_ns["_agent_last"].final_output
    res = await run(shell, "%agent_run -q --help-me")
    assert "unrecognized option --help-me (--help lists the options" in str(res.error_in_exec)


@pytest.mark.parametrize("line", [
    "%agent_mcp add demo -- python -c pass",  # stdio
    "%agent_mcp add web http://127.0.0.1:9/mcp",  # streamable HTTP
])
async def test_agent_mcp_without_the_mcp_package_says_what_to_install(shell: InteractiveShell, line: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mcp", None)  # `import mcp` raises ImportError, as when it is not installed
    res = await run(shell, line)
    assert type(res.error_in_exec).__name__ == "UsageError"  # one line, no traceback of the rewritten cell
    assert "pip install 'menglong-magic[mcp]'" in str(res.error_in_exec)
    assert not shell.user_ns.get("_agent_last")


async def test_agent_map_view_is_titled_with_the_variable_as_the_run_views_are(
        shell: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    await run(shell, "bot = ChatAgent(model=ScriptedModel(['a', 'b', 'c']))\n"
                     "named = ChatAgent(model=ScriptedModel(['x']), name='classifier')\nitems = ['1', '2']")
    capsys.readouterr()
    await run(shell, "%agent_map -a bot -q items")
    out = capsys.readouterr().out
    assert "[bot map]" in out and "agent-" not in out, out  # not the generated name
    await run(shell, "%agent_run -a bot -q task")
    assert "[bot]" in capsys.readouterr().out
    await run(shell, "%agent_map -a named -q items")
    assert "[classifier map]" in capsys.readouterr().out  # a name the user gave wins, as for runs
