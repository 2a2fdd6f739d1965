"""The kernel toolset on an in-process IPython shell: what each tool answers, its bounds, and its redaction."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
from IPython.core.interactiveshell import InteractiveShell

from menglong_magic import ChatAgent
from menglong_magic.events import ToolAttachment
from menglong_magic.ipython.kernel_tools import LIST_LIMIT, KernelTools, secret_name
from menglong_magic.models import ScriptedModel, call, calls, reply
from menglong_magic.secrets import register_secret, secret_forms
from menglong_magic.tools.base import RunContext, Toolset


@pytest.fixture
def shell() -> Iterator[InteractiveShell]:
    sh = InteractiveShell.instance()
    sh.reset()
    yield sh
    sh.reset()


def context(events: list[Any]) -> RunContext:
    return RunContext("run", None, "run_code", "call-1", 1, _emit=events.append)


def test_it_is_a_toolset_and_run_code_follows_the_policy(shell: InteractiveShell) -> None:
    import asyncio

    for policy, offered, gated in (("ask", True, True), ("allow", True, False), ("never", False, None)):
        kt = KernelTools(shell, run_code=policy)  # type: ignore[arg-type]
        assert isinstance(kt, Toolset)
        tools = {t.name: t for t in asyncio.run(kt.list_tools())}
        assert ("run_code" in tools) is offered
        if offered:
            assert tools["run_code"].requires_approval is gated
            assert "ctx" not in json.dumps(tools["run_code"].parameters)  # the RunContext is injected
    with pytest.raises(ValueError):
        KernelTools(shell, run_code="sometimes")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["api_key", "OPENAI_API_KEY", "dbPassword", "client_secret", "authToken",
                                  "GITHUB_TOKEN", "aws_secret_access_key", "my_pwd", "private_key", "token"])
def test_credential_names(name: str) -> None:
    assert secret_name(name)


@pytest.mark.parametrize("name", ["keys", "tokens", "monkey", "author", "sales", "df", "x"])
def test_data_names_are_not_credentials(name: str) -> None:
    assert not secret_name(name)


async def test_list_variables_shapes_exclusions_and_secrets(shell: InteractiveShell) -> None:
    registered = "reg-LISTVALUE-91a2b3c4"
    register_secret(registered)
    shell.run_cell(
        "import json, os\nimport pandas as pd, numpy as np\n"
        "df = pd.DataFrame({'a': [1, 2], 'b': ['x', None]})\ns = df.a\narr = np.zeros((3, 4))\n"
        "items = list(range(100))\nconfig = {'host': 'db', 'header': 'Bearer abcdefghijklmnop'}\n"
        "settings = {'db': {'password': 'plainpw-998877', 'port': 5432}}\nbig = dict.fromkeys(range(10**6), 0)\n"
        f"innocent = {registered!r}\napi_key = 'zz-plain-value-123456'\nGITHUB_TOKEN = 'ghp-abc-def-ghi'\n"
        "def helper(): pass\nclass Thing: pass\n_private = 1\n"
        "from menglong_magic import ChatAgent\nagent = ChatAgent(model='offline')")
    listed = await KernelTools(shell).list_variables()
    lines = dict(line.split(": ", 1) for line in listed.splitlines())
    assert lines["df"] == "DataFrame 2×2 [a:int64, b:str]" or lines["df"].startswith("DataFrame 2×2 [a:int64, b:")
    assert lines["s"].startswith("Series len=2 dtype=int64")
    assert lines["arr"] == "ndarray shape=(3, 4) dtype=float64"
    assert lines["items"].startswith("list len=100 [0, 1, 2")
    assert lines["innocent"] == lines["api_key"] == lines["GITHUB_TOKEN"] == "***"
    assert "abcdefghijklmnop" not in listed  # a credential inside a container's preview is redacted
    assert lines["settings"] == "dict len=1 {'db': {'password': ***, 'port': 5432}}"  # by its key's name
    assert lines["big"] == "dict len=1000000 {0: 0, 1: 0, 2: 0, 3: 0, 4: 0, 5: 0, ...}"  # first items, unsorted
    for hidden in ("json", "os", "pd", "np", "helper", "Thing", "_private", "agent", "ChatAgent", "In", "Out",
                   "get_ipython", "exit"):
        assert hidden not in lines
    for secret in ("zz-plain-value-123456", "ghp-abc-def-ghi", registered):
        assert not any(form in listed for form in secret_forms(secret))


async def test_list_is_bounded_and_says_what_was_cut(shell: InteractiveShell) -> None:
    for i in range(400):
        shell.user_ns[f"variable_{i:03d}"] = "x" * 50
    listed = await KernelTools(shell).list_variables()
    assert len(listed) <= LIST_LIMIT + 600
    note = listed.splitlines()[-1]
    shown = len(listed.splitlines()) - 1
    assert note.startswith(f"… {400 - shown} more variables not shown") and f"variable_{shown:03d}" in note
    shell.reset()
    assert "No user variables" in await KernelTools(shell).list_variables()


async def test_inspect_each_kind(shell: InteractiveShell) -> None:
    shell.user_ns.update(
        df=pd.DataFrame({"city": ["a", "b", "c"], "sales": [1.0, None, 3.0]}),
        series=pd.Series([1, 2, 3], name="n"),
        arr=np.arange(12.0).reshape(3, 4),
        mapping={"k": list(range(5)), "z": "y"},
        text="hello " * 1000,
        number=42,
        password="hunter2-pass-000",
    )
    kt = KernelTools(shell)
    df = await kt.inspect_variable("df")
    assert "shape 3×2" in df and "null counts: sales=1" in df and "head():" in df and "describe():" in df
    series = await kt.inspect_variable("series")
    assert "Series, length 3, dtype int64" in series and "mean" in series
    arr = await kt.inspect_variable("arr")
    assert "shape (3, 4)" in arr and "min 0, max 11, mean 5.5" in arr
    assert "len=2" in await kt.inspect_variable("mapping")
    text = await kt.inspect_variable("text")
    assert "len=6000" in text and len(text) < 600
    assert "int\n42" in await kt.inspect_variable("number")
    assert await kt.inspect_variable("password") == "password: *** (hidden: it looks like a credential)"
    assert "no variable named 'DF'" in await kt.inspect_variable("DF") and "'df'" in await kt.inspect_variable("DF")
    assert "no variable" in await kt.inspect_variable("_private")


async def test_inspect_samples_a_huge_frame(shell: InteractiveShell) -> None:
    rows = 2_000_000
    shell.user_ns["big"] = pd.DataFrame({"v": np.arange(rows, dtype=float), "w": np.ones(rows)})
    answer = await KernelTools(shell).inspect_variable("big")
    assert "describe() (estimated from a random sample of 100,000 of 2,000,000 rows)" in answer
    assert "null counts: none" in answer  # exact: one vectorised pass
    assert len(answer) < 8000


async def test_run_code_output_value_errors_and_redaction(shell: InteractiveShell) -> None:
    shell.user_ns["db_password"] = "pw-RUNCODE-123456789"
    kt = KernelTools(shell, run_code="allow")
    events: list[Any] = []
    out = await kt.run_code("import sys\nprint('hello')\nprint('warn', file=sys.stderr)\nx = 6 * 7\nx", context(events))
    assert out == "stdout:\nhello\n\nstderr:\nwarn\n\nvalue:\n42"
    assert shell.user_ns["x"] == 42  # assignments stay in the notebook
    assert "(no output)" == await kt.run_code("y = 1", context(events))
    err = await kt.run_code("def f():\n    return {}['missing']\nf()", context(events))
    assert "KeyError: 'missing'" in err and "line 2, in f" in err and "return {}['missing']" in err
    assert "SyntaxError" in await kt.run_code("def (:", context(events))
    assert "SystemExit" in await kt.run_code("raise SystemExit(3)", context(events))
    leaked = await kt.run_code("print(db_password)\ndb_password", context(events))
    assert "pw-RUNCODE" not in leaked and "***" in leaked
    frame = await kt.run_code("import pandas as pd\npd.DataFrame({'a': range(1000)})", context(events))
    assert len(frame) < 6100 and frame.startswith("value:\nDataFrame 1000×1\n")


async def test_run_code_captures_figures_as_png(shell: InteractiveShell) -> None:
    import matplotlib

    matplotlib.use("Agg")
    kt = KernelTools(shell, run_code="allow")
    events: list[Any] = []
    out = await kt.run_code("import matplotlib.pyplot as plt\nplt.figure()\nplt.plot([1, 3, 2])\n"
                            "plt.figure()\nplt.hist([1, 2, 2, 3])\nNone", context(events))
    attachments = [e for e in events if isinstance(e, ToolAttachment)]
    assert [a.mime for a in attachments] == ["image/png", "image/png"]
    assert all(base64.b64decode(a.data).startswith(b"\x89PNG\r\n\x1a\n") for a in attachments)
    assert "[figure 1: a " in out and "[figure 2: a " in out
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []  # closed: the cell does not show them a second time
    assert "figure" not in await kt.run_code("z = 1", context(events))


async def test_propose_cell_and_last_error(shell: InteractiveShell) -> None:
    kt = KernelTools(shell)
    answer = await kt.propose_cell("df.describe()")
    assert answer == "The code was put into the next input prompt, not executed."
    assert shell.rl_next_input == "df.describe()"
    shell.run_cell("values = [1, 2]\n", store_history=True)
    shell.run_cell("values[5]\n", store_history=True)
    shell.run_cell("'the current cell'\n", store_history=True)
    report = await kt.last_error()
    assert "IndexError: list index out of range" in report and "values[5]" in report
    assert "Recent cells" in report and "values = [1, 2]" in report
    assert "'the current cell'" not in report  # the cell asking is not one of the "last cells"


async def test_a_run_with_the_toolset_keeps_the_history_valid(shell: InteractiveShell) -> None:
    """Through the agent: a per-run toolset (not added to the agent) and an approval-gated run_code denied
    where nobody can be asked."""
    shell.user_ns["n"] = 5
    agent = ChatAgent(model=ScriptedModel([calls(call("inspect_variable", {"name": "n"}),
                                                 call("run_code", {"code": "n = 0"})), reply("done")]), mode="auto")
    result = await agent.arun("look", toolsets=[KernelTools(shell)])
    assert result.stop_reason == "completed" and agent.toolsets == []
    status = {c.name: c.status for c in result.tool_calls}
    assert status == {"inspect_variable": "ok", "run_code": "denied"}
    assert shell.user_ns["n"] == 5
    assert [m["role"] for m in agent.messages] == ["user", "assistant", "tool", "tool", "assistant"]


async def test_the_magics_flag_and_config(shell: InteractiveShell,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MENGLONG_MODEL", "offline")
    shell.run_line_magic("load_ext", "menglong_magic")

    async def run(code: str) -> Any:
        return await shell.run_cell_async(code, store_history=True, transformed_cell=shell.transform_cell(code))

    def scripted() -> ChatAgent:
        return ChatAgent(model=ScriptedModel([calls(call("list_variables")), reply("seen")]), mode="auto")

    try:
        shell.user_ns.update(agent=scripted(), n=3)
        await run("r = %agent_run -a agent --kernel -q look")
        assert [(c.name, c.status) for c in shell.user_ns["r"].tool_calls] == [("list_variables", "ok")]
        assert "n: int 3" in shell.user_ns["r"].tool_calls[0].result
        # without --kernel the tools are not there (the model's call is answered "unknown tool")
        shell.user_ns["agent"] = scripted()
        await run("r = %agent_run -a agent -q look")
        assert shell.user_ns["r"].tool_calls[0].status == "error"
        # %config turns them on for every run
        shell.run_line_magic("config", "AgentMagics.kernel_tools = True")
        shell.user_ns["agent"] = scripted()
        await run("r = %agent_run -a agent -q look")
        assert shell.user_ns["r"].tool_calls[0].status == "ok"
        # toolsets are a run option: --kernel gives every message of --sequential / --batch the kernel tools
        shell.run_line_magic("config", "AgentMagics.kernel_tools = False")
        for how in ("--sequential", "--batch"):
            def step(request: Any) -> Any:  # parallel items interleave: answer by where each one is
                return reply("seen") if request.messages[-1]["role"] == "tool" else calls(call("list_variables"))

            shell.user_ns["agent"] = ChatAgent(model=ScriptedModel([step] * 4), mode="auto")
            result = await run(f"%%agent -a agent --kernel -q {how} -o rs\none\ntwo")
            assert result.error_in_exec is None, result.error_in_exec
            assert [[(c.name, c.status) for c in r.tool_calls] for r in shell.user_ns["rs"]] == \
                [[("list_variables", "ok")]] * 2, how
    finally:
        shell.run_line_magic("config", "AgentMagics.kernel_tools = False")
        shell.run_line_magic("unload_ext", "menglong_magic")


def test_the_card_shows_code_and_attachments_escaped() -> None:
    from menglong_magic import events as ev
    from menglong_magic.ui.html import card_html
    from menglong_magic.ui.state import RunViewModel

    xss = '<img src=x onerror="alert(1)">'
    vm = RunViewModel()
    for event in (
        ev.RunStarted("r", agent="a", model="m", mode="auto", task="t", max_iterations=2),
        ev.IterationStarted("r", iteration=1, max_iterations=2),
        ev.ToolCallStarted("r", iteration=1, call_id="c", name="run_code", arguments={"code": f"print('{xss}')"}),
        ev.ToolAttachment("r", iteration=1, call_id="c", name="run_code", mime="image/png",
                          data=base64.b64encode(b"\x89PNG fake").decode(), description=xss),
        ev.ToolAttachment("r", iteration=1, call_id="c", name="run_code", mime="image/png",
                          data='"><script>alert(1)</script>', description="hostile data"),
        ev.ToolAttachment("r", iteration=1, call_id="c", name="run_code", mime="text/html",
                          data=base64.b64encode(xss.encode()).decode(), description="html is never inlined"),
    ):
        vm.apply(event)
    html = card_html(vm.iterations[0].tools["c"])
    assert xss not in html and "<script>" not in html
    assert 'class="mm-code"' in html and "print" in html  # the code, highlighted, not a JSON string
    assert html.count("<img ") == 1 and "[image/png: hostile data]" in html  # not base64: described only
    assert "[text/html: html is never inlined]" in html
