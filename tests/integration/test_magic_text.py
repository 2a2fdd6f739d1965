"""Magic text reaches the model as typed (no IPython ``$``/``{}`` expansion), map templates are filled from
each item only, ``-i`` interpolates the same way everywhere, and ``--bg -o VAR`` keeps the handle.

An in-process IPython shell, the real openai client, the scripted server on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest
from IPython.core.interactiveshell import InteractiveShell

from menglong_magic.testing import ScriptedOpenAIServer, echo_responder


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer(responder=echo_responder()) as s:
        monkeypatch.setenv("OPENAI_BASE_URL", s.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-text")
        yield s


@pytest.fixture
def shell(server: ScriptedOpenAIServer) -> Iterator[InteractiveShell]:
    sh = InteractiveShell.instance()
    sh.reset()
    sh.run_line_magic("load_ext", "menglong_magic")
    sh.run_line_magic("config", "AgentMagics.model = 'scripted'")
    yield sh
    sh.run_line_magic("unload_ext", "menglong_magic")


async def run(sh: InteractiveShell, code: str) -> Any:
    result = await sh.run_cell_async(code, store_history=True, transformed_cell=sh.transform_cell(code))
    assert result.error_in_exec is None and result.error_before_exec is None, (
        result.error_in_exec or result.error_before_exec)
    return result


def sent(server: ScriptedOpenAIServer) -> list[str]:
    """The last user message of every request, in order."""
    return [[m for m in r["messages"] if m["role"] == "user"][-1]["content"] for r in server.requests]


TEXTS = ["Convert $5 to euros", "Is {100} a set literal?", "Print {text} and $text, {{braces}} and $$", "{}"]


@pytest.mark.parametrize("text", TEXTS)
async def test_agent_run_task_reaches_the_server_verbatim(shell: InteractiveShell, server: ScriptedOpenAIServer,
                                                          text: str) -> None:
    await run(shell, "text = 'NAMESPACE VALUE'")
    await run(shell, f"%agent_run -q {text}")
    assert sent(server) == [text]
    await run(shell, f"r = %agent_run -q {text}")  # the assignment form too
    assert sent(server)[-1] == text


@pytest.mark.parametrize("text", TEXTS)
async def test_cell_body_and_batch_lines_reach_the_server_verbatim(shell: InteractiveShell,
                                                                   server: ScriptedOpenAIServer, text: str) -> None:
    await run(shell, "text = 'NAMESPACE VALUE'")
    await run(shell, f"%%agent -q\n{text}")
    await run(shell, f"%%agent -q --batch\n{text}\n{text} again")
    assert sorted(sent(server)) == sorted([text, text, f"{text} again"])


async def test_the_fallback_path_keeps_the_text_too(shell: InteractiveShell, server: ScriptedOpenAIServer) -> None:
    # run_line_magic from code: IPython would var_expand the line unless the magic says no.
    await run(shell, "def go():\n    return get_ipython().run_line_magic('agent_run', '-q Convert $5 to {euros}')")
    await run(shell, "euros = 'EUR'\nr = go()")
    assert sent(server) == ["Convert $5 to {euros}"]
    assert shell.user_ns["r"].final_output == "echo: Convert $5 to {euros}"


async def test_map_template_fields_come_from_each_row_only(shell: InteractiveShell,
                                                           server: ScriptedOpenAIServer) -> None:
    shell.user_ns["reviews"] = pd.DataFrame({"text": ["great phone", "broke in a day", "fine"]})
    await run(shell, "text = 'THE NAMESPACE VARIABLE'")
    await run(shell, "%agent_map -q -o labels reviews Classify the sentiment of: {text}")
    assert sorted(sent(server)) == sorted(f"Classify the sentiment of: {t}"
                                          for t in ["great phone", "broke in a day", "fine"])
    assert list(shell.user_ns["labels"]) == [f"echo: Classify the sentiment of: {t}"
                                             for t in ["great phone", "broke in a day", "fine"]]
    server.reset_stats()
    await run(shell, "words = ['cheap $5', '{x}']")  # string items: {} is the item, $ is text
    await run(shell, "%agent_map -q words Say $1 for: {}")
    assert sorted(sent(server)) == sorted(["Say $1 for: cheap $5", "Say $1 for: {x}"])


async def test_interpolation_only_with_i_the_same_way_in_every_magic(shell: InteractiveShell,
                                                                     server: ScriptedOpenAIServer) -> None:
    await run(shell, "city = 'Oslo'\ntext = 'NAMESPACE'\nrows = [{'text': 'row one'}]")
    await run(shell, "%agent_run -q -i weather in {city} {{literal}} $5")
    await run(shell, "%%agent -q -i\nweather in {city}")
    await run(shell, "%agent_map -q -i rows In {city}: {text}")  # the item's field wins over the namespace
    assert sent(server) == ["weather in Oslo {literal} $5", "weather in Oslo", "In Oslo: row one"]
    failed = await shell.run_cell_async("%agent_run -q -i {nowhere}",
                                        transformed_cell=shell.transform_cell("%agent_run -q -i {nowhere}"))
    assert "nowhere" in str(failed.error_in_exec)


async def test_bg_out_var_stays_the_handle_and_the_result_lands_in_agent_last(
        shell: InteractiveShell, server: ScriptedOpenAIServer) -> None:
    await run(shell, "%agent_run --bg -q -o job Convert $5 to euros")
    job = shell.user_ns["job"]
    result = await run(shell, "r = await job")  # awaitable, and again after it ended
    assert shell.user_ns["r"].final_output == "echo: Convert $5 to euros"
    assert shell.user_ns["job"] is job and job.done()
    assert job.result() is shell.user_ns["r"] is shell.user_ns["_agent_last"]
    result = await run(shell, "await job")
    assert result.result is shell.user_ns["r"]
    assert "done" in repr(job)


async def test_a_run_on_an_unnamed_agent_is_titled_with_its_variable(shell: InteractiveShell,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """-a VARIABLE: the view says the variable's name for an agent whose name was generated ("agent-7" says
    nothing the user wrote); an agent given a name keeps it; a fork's generated name is generated too."""
    await run(shell, "from menglong_magic import ChatAgent\n"
                     "helper = ChatAgent(model='scripted')\nscout = ChatAgent(model='scripted', name='Scout')\n"
                     "twin = helper.fork()\nnamed_twin = helper.fork('Twin')")
    ns = shell.user_ns
    assert not ns["helper"].named and ns["scout"].named and not ns["twin"].named and ns["named_twin"].named
    for variable, title in [("helper", "helper"), ("scout", "Scout"), ("twin", "twin"), ("named_twin", "Twin")]:
        capsys.readouterr()
        await run(shell, f"%agent_run -a {variable} -q say hi")
        await run(shell, f"%%agent -a {variable} -q\nhello")
        lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
        assert [line.split("]")[0] for line in lines] == [f"[{title}", f"[{title}"], lines
    ns["helper"].name = "Renamed"  # set later: now given
    capsys.readouterr()
    await run(shell, "%agent_run -a helper -q say hi")
    assert capsys.readouterr().out.startswith("[Renamed] ")
