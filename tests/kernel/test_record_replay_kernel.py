"""--record and -m replay: in a real kernel: a notebook run recorded, then replayed without its model."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.kernel

SETUP = """
%load_ext menglong_magic
from menglong_magic import ChatAgent, tool
from menglong_magic.models import ScriptedModel, calls, call, reply

@tool
def population(city: str) -> int:
    \"\"\"Inhabitants of a city.\"\"\"
    return {"Paris": 2100000}.get(city, 0)
"""


def test_record_then_replay_the_same_run(kernel, tmp_path):
    cassette = tmp_path / "run.jsonl"
    kernel.ok(SETUP)
    kernel.ok("agent = ChatAgent(model=ScriptedModel([calls(call('population', {'city': 'Paris'})), "
              "reply('Paris has 2.1 million inhabitants.')]), mode='auto', tools=[population])")
    kernel.ok(f"%agent_run -a agent -q -o first --record {cassette} How many people live in Paris?")
    lines = cassette.read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["v"] == 1 for line in lines)
    # The agent's own model is untouched by the recording.
    assert kernel.ok("print(type(agent.model).__name__)").stdout.strip() == "ScriptedModel"
    # Replay with a fresh agent whose scripted model is empty: every answer comes from the cassette.
    kernel.ok("fresh = ChatAgent(model=ScriptedModel([]), mode='auto', tools=[population])")
    kernel.ok(f"%agent_run -a fresh -q -o second -m replay:{cassette} How many people live in Paris?")
    out = kernel.ok("import json\nprint(json.dumps([first.final_output == second.final_output, "
                    "[(c.name, c.arguments, c.result) for c in second.tool_calls], second.iterations_used, "
                    "second.model]))")
    same, calls_, iterations, model = json.loads(out.stdout)
    assert same and calls_ == [["population", {"city": "Paris"}, "2100000"]] and iterations == 2
    assert model.startswith("replay:")
    # A whole notebook can replay: %config AgentMagics.model
    kernel.ok(f"%config AgentMagics.model = 'replay:{cassette}'")
    kernel.ok("%agent_run -q -o third How many people live in Paris?")
    out = kernel.ok("print(third.final_output)")
    assert out.stdout.strip() == "Paris has 2.1 million inhabitants."
