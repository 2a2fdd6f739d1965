"""Every run option × every entry point, generated from the declaration (``RunOptions``).

Each option has one probe: how to give it (Python keyword; magic flag, ``%config`` trait, or the ``-a``
agent's default), what the scripted server answers, and what must then be seen at the server or in the run's
result. Each entry point (every public ChatAgent method taking ``**options``, and every running magic) runs
one message with it. A new option without a probe, or a new entry point without an adapter, fails
:func:`test_the_matrix_covers_every_option_and_entry_point`.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import BaseModel

from menglong_magic import ChatAgent, tool
from menglong_magic import events as ev
from menglong_magic.agent import ApprovalDecision, RunResult, WorkflowStep
from menglong_magic.agent.options import RUN_OPTIONS, RunOptions
from menglong_magic.ipython.options import MAGIC_SOURCES
from menglong_magic.models import ModelError, OpenAIModel, RetryPolicy
from menglong_magic.testing import ScriptedOpenAIServer, call_tools, fault, reply, tool_call
from menglong_magic.usage import UsageLimits

MESSAGE = "probe message"
FAST_RETRY = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.2)
ran: list[str] = []


def probe_tool(x: str = "") -> str:
    """A plain tool (no approval needed)."""
    ran.append("probe_tool")
    return "probed"


@tool(requires_approval=True)
def guarded(x: str = "") -> str:
    """A tool that needs approval."""
    ran.append("guarded")
    return "guarded ran"


class Probe(BaseModel):
    n: int


def approve_yes(request: Any) -> ApprovalDecision:
    return ApprovalDecision(True, None, "callback")


async def approve_never(request: Any) -> ApprovalDecision:
    await asyncio.sleep(120)  # only approval_timeout ends this
    return ApprovalDecision(True, None, "callback")


def calls_then_answers(name: str, arguments: dict[str, Any] | None = None) -> Callable[[dict[str, Any]], Any]:
    def respond(body: dict[str, Any]) -> Any:
        if body["messages"][-1].get("role") == "user":
            return call_tools(tool_call(name, {"x": "1"} if arguments is None else arguments))
        return reply("done")
    return respond


def always_calls(name: str) -> Callable[[dict[str, Any]], Any]:
    return lambda body: call_tools(tool_call(name, {"x": "1"}))


def _workspace() -> Any:
    """The kernel tools over a namespace holding ``items`` (as the magics' shell does): a real toolset."""
    from types import SimpleNamespace

    from menglong_magic.ipython.kernel_tools import KernelTools

    return KernelTools(SimpleNamespace(user_ns={"items": [MESSAGE]}, user_ns_hidden={}))


@dataclass
class Probe_:
    """How one option is given and what it must do."""

    python: dict[str, Any]  # the keyword for the Python entry points
    check: Callable[[ScriptedOpenAIServer, list[RunResult]], None]
    responder: Callable[[dict[str, Any]], Any] = field(default=lambda body: reply("done"))
    fresh_responder: Callable[[], Callable[[dict[str, Any]], Any]] | None = None  # one per test, for a stateful one
    agent_tools: tuple[Any, ...] = ()
    flags: str = ""  # the magics' flag ...
    config: dict[str, Any] = field(default_factory=dict)  # ... or %config AgentMagics.* ...
    agent: dict[str, Any] = field(default_factory=dict)  # ... or the -a agent's own default


def _completed(results: list[RunResult]) -> None:
    assert results and all(r.stop_reason == "completed" for r in results), [r.stop_reason for r in results]


def _check_model(server: ScriptedOpenAIServer, results: list[RunResult]) -> None:
    assert server.requests and all(r["model"] == "probe-model" for r in server.requests)
    _completed(results)


def _check_system(server: ScriptedOpenAIServer, results: list[RunResult]) -> None:
    assert all(r["messages"][0] == {"role": "system", "content": "PROBE SYSTEM"} for r in server.requests)


def _check_tools(server: ScriptedOpenAIServer, results: list[RunResult]) -> None:
    assert [t["function"]["name"] for t in server.requests[0]["tools"]] == ["probe_tool"]
    assert ran == ["probe_tool"] * len(results)
    _completed(results)


def _check_toolsets(server: ScriptedOpenAIServer, results: list[RunResult]) -> None:
    offered = {t["function"]["name"] for t in server.requests[0]["tools"]}
    assert {"probe_tool", "list_variables", "inspect_variable"} <= offered  # the agent's tools and the set's
    answers = [m["content"] for m in server.requests[1]["messages"] if m["role"] == "tool"]
    assert len(answers) == 1 and "items: list" in answers[0], answers  # the toolset's tool ran
    _completed(results)


def _check_mode(server: ScriptedOpenAIServer, results: list[RunResult]) -> None:
    assert server.requests and all("tools" not in r for r in server.requests)  # NORMAL: no tools sent
    _completed(results)


def _check_max_iterations(server: ScriptedOpenAIServer, results: list[RunResult]) -> None:
    assert [r.stop_reason for r in results] == ["max_iterations"] and len(results[0].iterations) == 2
    assert len(server.requests) == 2


def _check_timeout(server: ScriptedOpenAIServer, results: list[RunResult]) -> None:
    assert [r.stop_reason for r in results] == ["timeout"]


def _late_once() -> Callable[[dict[str, Any]], Any]:
    """The first request answered after 3 s, the next at once: a 0.5 s request timeout cuts the first."""
    answered: list[None] = []

    def respond(body: dict[str, Any]) -> Any:
        answered.append(None)
        return reply("late", delay=3.0) if len(answered) == 1 else reply("done")
    return respond


def _check_request_timeout(server: ScriptedOpenAIServer, results: list[RunResult]) -> None:
    # Two requests: the first was cut at 0.5 s and retried (with the 120 s default it would have been answered).
    assert len(server.requests) == 2
    _completed(results)
    assert [r.final_output for r in results] == ["done"]


def _check_max_retries(server: ScriptedOpenAIServer, results: list[RunResult]) -> None:
    assert [r.stop_reason for r in results] == ["error"]
    assert len(server.requests) == 1  # one attempt: the model's own policy would make 4


def _check_approved(server: ScriptedOpenAIServer, results: list[RunResult]) -> None:
    assert ran == ["guarded"]
    _completed(results)


def _check_denied(server: ScriptedOpenAIServer, results: list[RunResult]) -> None:
    assert ran == []  # the tool never ran: nobody approved it
    assert any(r["role"] == "tool" for r in server.requests[-1]["messages"])  # the model was told
    _completed(results)


def _check_output(server: ScriptedOpenAIServer, results: list[RunResult]) -> None:
    assert "response_format" in server.requests[0]
    assert [r.output for r in results] == [Probe(n=7)]


def _check_usage_limit(server: ScriptedOpenAIServer, results: list[RunResult]) -> None:
    assert [r.stop_reason for r in results] == ["usage_limit"] and len(server.requests) == 1


def _check_model_settings(server: ScriptedOpenAIServer, results: list[RunResult]) -> None:
    assert server.requests and all(r.get("temperature") == 0.25 for r in server.requests)
    _completed(results)


PROBES: dict[str, Probe_] = {
    "model": Probe_({"model": "probe-model"}, _check_model, flags="-m probe-model"),
    "system": Probe_({"system": "PROBE SYSTEM"}, _check_system, flags="-s 'PROBE SYSTEM'"),
    "tools": Probe_({"tools": [probe_tool]}, _check_tools, calls_then_answers("probe_tool"), flags="-t probe_tool"),
    "toolsets": Probe_({"toolsets": [_workspace()]}, _check_toolsets, calls_then_answers("list_variables", {}),
                       agent_tools=(probe_tool,), flags="--kernel"),
    "mode": Probe_({"mode": "normal"}, _check_mode, agent_tools=(probe_tool,), flags="--mode normal"),
    "max_iterations": Probe_({"max_iterations": 2}, _check_max_iterations, always_calls("probe_tool"),
                             agent_tools=(probe_tool,), flags="--max-iterations 2"),
    "timeout": Probe_({"timeout": 0.5}, _check_timeout, lambda body: reply("late", delay=3.0),
                      flags="--timeout 0.5"),
    "request_timeout": Probe_({"request_timeout": 0.5}, _check_request_timeout, fresh_responder=_late_once,
                              config={"request_timeout": 0.5}),
    "max_retries": Probe_({"max_retries": 0}, _check_max_retries, lambda body: fault(503),
                          config={"max_retries": 0}),
    "approve": Probe_({"approve": approve_yes}, _check_approved, calls_then_answers("guarded"),
                      agent_tools=(guarded,), agent={"approve": approve_yes}),
    "approve_all": Probe_({"approve_all": True}, _check_denied, calls_then_answers("probe_tool"),
                          agent_tools=(probe_tool,), flags="--approve"),
    "approval_timeout": Probe_({"approve": approve_never, "approval_timeout": 0.3}, _check_denied,
                               calls_then_answers("guarded"), agent_tools=(guarded,),
                               config={"approval_timeout": 0.3}, agent={"approve": approve_never}),
    "output_type": Probe_({"output_type": Probe}, _check_output, lambda body: reply('{"n": 7}'),
                          flags="--output Probe"),
    "usage_limits": Probe_({"usage_limits": UsageLimits(max_requests=1)}, _check_usage_limit,
                           always_calls("probe_tool"), agent_tools=(probe_tool,),
                           agent={"usage_limits": UsageLimits(max_requests=1)}),
    "model_settings": Probe_({"model_settings": {"temperature": 0.25}}, _check_model_settings,
                             agent={"model_settings": {"temperature": 0.25}}),
}


# ----------------------------------------------------------------------------------- Python entry points
def _thread(fn: Callable[[], Any]) -> Awaitable[Any]:
    return asyncio.to_thread(fn)  # a sync twin runs on its own thread's loop, as in a script


def _with_workflow(agent: ChatAgent) -> ChatAgent:
    agent.workflow = [WorkflowStep("ask", "{input}")]  # one prompt step: a chat turn with the run options
    return agent


PYTHON_ENTRIES: dict[str, Callable[[ChatAgent, dict[str, Any]], Awaitable[Any]]] = {
    "arun": lambda a, o: a.arun(MESSAGE, **o),
    "run": lambda a, o: _thread(lambda: a.run(MESSAGE, **o)),
    "chat_async": lambda a, o: a.chat_async(MESSAGE, **o),
    "chat": lambda a, o: _thread(lambda: a.chat(MESSAGE, **o)),
    "chat_result_async": lambda a, o: a.chat_result_async(MESSAGE, **o),
    "batch_run_async": lambda a, o: a.batch_run_async([MESSAGE], **o),
    "batch_chat_async": lambda a, o: a.batch_chat_async([MESSAGE], **o),
    "batch_chat": lambda a, o: _thread(lambda: a.batch_chat([MESSAGE], **o)),
    "sequential_run_async": lambda a, o: a.sequential_run_async([MESSAGE], **o),
    "sequential_chat_async": lambda a, o: a.sequential_chat_async([MESSAGE], **o),
    "sequential_chat": lambda a, o: _thread(lambda: a.sequential_chat([MESSAGE], **o)),
    "map_async": lambda a, o: a.map_async([MESSAGE], **o),
    "map": lambda a, o: _thread(lambda: a.map([MESSAGE], **o)),
    "execute_workflow_async": lambda a, o: _with_workflow(a).execute_workflow_async(MESSAGE, **o),
    "execute_workflow": lambda a, o: _thread(lambda: _with_workflow(a).execute_workflow(MESSAGE, **o)),
}
#: Public methods that take the options but are not an entry point of their own.
NOT_ENTRIES = {"settings"}  # the resolver itself (checked through the Ray spec below)

MAGIC_ENTRIES: dict[str, str] = {
    "%agent_run": "%agent_run -a bot -q {flags} probe message",
    "%%agent": "%%agent -a bot -q {flags}\nprobe message",
    "%%agent --batch": "%%agent -a bot -q --batch {flags}\nprobe message",
    "%%agent --sequential": "%%agent -a bot -q --sequential {flags}\nprobe message",
    "%agent_map": "%agent_map -a bot -q {flags} items",
}


def _methods_taking_options() -> set[str]:
    names = set()
    for name, member in inspect.getmembers(ChatAgent, inspect.isfunction):
        if not name.startswith("_") and any(p.kind is p.VAR_KEYWORD for p in
                                            inspect.signature(member).parameters.values()):
            names.add(name)
    return names


def test_the_matrix_covers_every_option_and_entry_point() -> None:
    assert set(PROBES) == set(RUN_OPTIONS) == set(RunOptions.__annotations__) == set(MAGIC_SOURCES)
    assert _methods_taking_options() == set(PYTHON_ENTRIES) | NOT_ENTRIES
    for name, probe in PROBES.items():  # each magic probe goes through the source the magics declare
        given = probe.flags.split(" ")[0] if probe.flags else None
        source = MAGIC_SOURCES[name]
        assert (given and given in source) or any(f"AgentMagics.{k}" in source for k in probe.config) \
            or (probe.agent and "-a AGENT" in source) or name == "approve", name


def _agent(server: ScriptedOpenAIServer, probe: Probe_, **defaults: Any) -> ChatAgent:
    model = OpenAIModel("scripted", base_url=server.base_url, api_key="sk-matrix", retry=FAST_RETRY)
    return ChatAgent(model=model, mode="auto", tools=list(probe.agent_tools), name="bot", **defaults)


def _collect(agent: ChatAgent) -> list[RunResult]:
    results: list[RunResult] = []
    agent.subscribe(lambda e: results.append(e.result) if isinstance(e, ev.RunFinished) else None)
    return results


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedOpenAIServer]:
    ran.clear()
    with ScriptedOpenAIServer() as s:
        monkeypatch.setenv("OPENAI_BASE_URL", s.base_url)  # -m probe-model / model="probe-model" resolve here
        monkeypatch.setenv("OPENAI_API_KEY", "sk-matrix")
        yield s


@pytest.mark.parametrize("entry", sorted(PYTHON_ENTRIES))
@pytest.mark.parametrize("option", RUN_OPTIONS)
async def test_python_entry_point_applies_the_option(server: ScriptedOpenAIServer, option: str, entry: str) -> None:
    probe = PROBES[option]
    server.responder = probe.fresh_responder() if probe.fresh_responder else probe.responder
    agent = _agent(server, probe)
    results = _collect(agent)
    try:
        await asyncio.wait_for(PYTHON_ENTRIES[entry](agent, dict(probe.python)), 60)
    except (ModelError, RuntimeError, ValueError):  # chat() raises on a failed turn; the result is in the event
        pass
    probe.check(server, results)


# ----------------------------------------------------------------------------------- magics
@pytest.fixture
def shell(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from IPython.core.interactiveshell import InteractiveShell

    sh = InteractiveShell.instance()
    sh.reset()
    sh.run_line_magic("load_ext", "menglong_magic")
    yield sh
    sh.run_line_magic("unload_ext", "menglong_magic")


@pytest.mark.parametrize("entry", list(MAGIC_ENTRIES))
@pytest.mark.parametrize("option", RUN_OPTIONS)
async def test_magic_applies_the_option(server: ScriptedOpenAIServer, shell: Any, option: str, entry: str) -> None:
    probe = PROBES[option]
    server.responder = probe.fresh_responder() if probe.fresh_responder else probe.responder
    agent = _agent(server, probe, **probe.agent)
    results = _collect(agent)
    shell.user_ns.update(bot=agent, probe_tool=probe_tool, Probe=Probe, items=[MESSAGE])
    magics = shell.magics_manager.registry["AgentMagics"]
    for name, value in probe.config.items():
        setattr(magics, name, value)
    code = MAGIC_ENTRIES[entry].format(flags=probe.flags)
    outcome = await asyncio.wait_for(
        shell.run_cell_async(code, store_history=False, transformed_cell=shell.transform_cell(code)), 60)
    error = outcome.error_in_exec or outcome.error_before_exec
    assert error is None or type(error).__name__ == "AgentRunFailed", repr(error)
    probe.check(server, results)


# ----------------------------------------------------------------------------------- refusals and the Ray spec
@pytest.mark.parametrize("entry", sorted(PYTHON_ENTRIES))
async def test_unknown_keywords_are_refused_naming_the_options(server: ScriptedOpenAIServer, entry: str) -> None:
    agent = _agent(server, PROBES["model"])
    with pytest.raises(TypeError, match=r"'temperature'.*model_settings=.*request_timeout, max_retries"):
        await PYTHON_ENTRIES[entry](agent, {"temperature": 0.2})
    assert server.requests == []  # refused before anything reached the model


@pytest.mark.parametrize("option", RUN_OPTIONS)
def test_the_ray_spec_carries_every_option(server: ScriptedOpenAIServer, option: str) -> None:
    from menglong_magic.maps.ray import AgentSpec, RayExecutorError

    probe = PROBES[option]
    agent = _agent(server, probe)
    given = agent.settings(**probe.python)
    if option == "toolsets":  # a toolset (the kernel's namespace, an MCP server's process) stays here: refused
        with pytest.raises(RayExecutorError, match="toolsets"):
            AgentSpec.of(given, "auto", agent_class=ChatAgent)
        return
    spec, secrets = AgentSpec.of(given, "auto", agent_class=ChatAgent)
    assert "sk-matrix" in secrets.values()  # the key travels beside the spec, never in it
    _, rebuilt = spec.build()
    if option == "model":
        assert rebuilt.model.name == given.model.name == "probe-model"
    elif option == "tools":
        assert list(rebuilt.tools) == ["probe_tool"]
    elif option == "output_type":
        assert rebuilt.output.output_type is Probe
    else:
        fields = {k: v for k, v in probe.python.items()}
        for name, value in fields.items():
            got = getattr(rebuilt, name)
            assert (got.value if name == "mode" else dict(got) if name == "model_settings" else got) == value, name
    assert "sk-matrix" not in repr(spec)
