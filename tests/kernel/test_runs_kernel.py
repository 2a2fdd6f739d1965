"""Per-run settings, one answer per cell, and the model notice, in a real ipykernel."""

from __future__ import annotations

import json

import pytest
from test_magics_kernel import SETUP

pytestmark = pytest.mark.kernel

RECORDING = """
from menglong_magic.models import ModelResponse
from menglong_magic.models.base import Model

class Recording(Model):
    def __init__(self, name, delay):
        self.name, self.delay, self.requests = name, delay, []
    async def request(self, request, emit):
        self.requests.append(request)
        await asyncio.sleep(self.delay)
        return ModelResponse(f"{self.name} done")

first_model, second_model = Recording('first-model', 1.0), Recording('second-model', 0.5)
shared = ChatAgent(model=Recording('default', 0.1), system='original', name='shared')

@tool
def alpha(x: str) -> str:
    return x

@tool
def beta(x: str) -> str:
    return x
"""


def test_overlapping_bg_runs_with_overrides_leave_the_agent_unchanged(kernel):
    kernel.ok(SETUP + RECORDING)
    kernel.ok("a = %agent_run -a shared -q --bg -m offline -s 'first prompt' -t alpha task one")
    kernel.ok("shared_model = shared.model")
    kernel.ok("%%agent -a shared -q --bg -s 'second prompt' -t beta --mode auto\nmessage two")
    kernel.ok("first = await a")
    out = kernel.ok("import json\n"
                    "print(json.dumps([shared.system, shared.mode.value, sorted(shared.tools), shared.model.name, "
                    "shared.model is shared_model, first.model]))")
    system, mode, tools, model, same_model, first_model_name = json.loads(out.stdout)
    assert [system, mode, tools, model, same_model] == ["original", "normal", [], "default", True]
    assert first_model_name == "offline"
    # Each request carried its own run's settings.
    out = kernel.ok("import asyncio\nawait asyncio.sleep(1.0)\n"
                    "reqs = shared.model.requests\n"
                    "print(json.dumps([[r.messages[0]['content'], [t['function']['name'] for t in r.tools]] "
                    "for r in reqs]))")
    sent = json.loads(out.stdout)
    assert ["second prompt", ["beta"]] in sent
    assert all(s[0] != "first prompt" for s in sent)


def test_the_cell_shows_the_answer_once_and_no_out(kernel):
    kernel.ok(SETUP)
    kernel.ok("agent = ChatAgent(model=ScriptedModel([reply('The unique answer 4711.'), reply('again')]), mode='auto')")
    run = kernel.ok("%agent_run -a agent tell me")
    assert not run.of_type("execute_result")
    plain = run.data("text/plain")
    shown = sum(text.count("4711") for text in plain) + run.stdout.count("4711")
    assert shown == 1, (plain, run.stdout)
    out = kernel.ok("print(_agent_last.final_output)")
    assert out.stdout.strip() == "The unique answer 4711."
    run = kernel.ok("x = %agent_run -a agent -q again?")
    assert not run.of_type("execute_result")
    assert kernel.ok("print(x.final_output)").stdout.strip() == "again"


def test_no_model_notice_only_when_the_default_is_used(kernel):
    kernel.ok("import os\nos.environ.pop('MENGLONG_MODEL', None)\n"
              "import menglong_magic.models as m\nm.local_model_available = lambda: False")
    kernel.ok("%load_ext menglong_magic")
    explicit = kernel.ok("%%agent -m offline -q\nhello")
    assert "no model configured" not in explicit.stderr
    default = kernel.ok("%%agent -q\nhello")
    assert default.stderr.count("no model configured") == 1
    again = kernel.ok("%%agent -q\nhello again")
    assert "no model configured" not in again.stderr


def test_tool_progress_reaches_the_panel(kernel):
    kernel.ok(SETUP + """
from menglong_magic import RunContext

@tool
async def pages(ctx: RunContext) -> str:
    \"\"\"Read pages.\"\"\"
    for i in range(1, 4):
        ctx.progress(i, 3, f"page-{i}-of-3")
        await asyncio.sleep(0.3)
    return "read"
""")
    kernel.ok("agent = ChatAgent(model=ScriptedModel([calls(call('pages', {})), reply('ok')]), mode='auto', "
              "tools=[pages])")
    run = kernel.ok("%agent_run -a agent read the pages")
    comm = json.dumps([m["content"]["data"] for m in run.of_type("comm_msg") + run.of_type("comm_open")])
    assert "page-2-of-3" in comm


def test_finished_runs_hold_no_widget_models(kernel):
    kernel.ok(SETUP)
    kernel.ok("from ipywidgets.widgets import widget as _w\n"
              "agent = ChatAgent(model=ScriptedModel([calls(call('slow', {'seconds': 0.05})), reply('done')] * 5), "
              "mode='auto', tools=[slow])\nbefore = len(_w._instances)")
    for _ in range(5):
        run = kernel.ok("%agent_run -a agent --reset go")
        assert any(m["content"].get("target_name") == "jupyter.widget" for m in run.of_type("comm_open"))
        assert run.data("text/html"), "no final view"
    out = kernel.ok("print(before, len(_w._instances))")
    before, after = out.stdout.split()
    assert after == before  # every run's widget model was closed
