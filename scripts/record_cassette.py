"""Record the teaching cassette: a short tool-using run of the embedded local model, replayable without it.

    .venv/bin/python scripts/record_cassette.py            # writes notebooks/cassettes/weather_local.jsonl
    .venv/bin/python scripts/record_cassette.py --check    # only replays the committed cassette

Needs the ``local`` extra (llama-cpp-python + SmolLM2-135M); no key, no network. The run is recorded into a
temporary file, replayed at once in strict mode (same final output, tool calls and iteration count, same
streamed fragments), and only then moved over ``notebooks/cassettes/<name>.jsonl``: a failed or
tool-less run never replaces a good cassette.

A notebook replays it with the same tools and task (strict replay compares messages and tools, so the
tool's code and the task must be exactly ``TOOLS_SOURCE`` and ``TASK`` below)::

    agent = ChatAgent(model="replay:cassettes/weather_local.jsonl", tools=[get_weather])
    result = await agent.arun("What is the weather in Paris?")
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import sys
import tempfile
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
CASSETTES = ROOT / "notebooks" / "cassettes"

#: The notebook cell that defines the tool (executed here too, so both offer the same schema).
TOOLS_SOURCE = '''\
from menglong_magic import tool


@tool
def get_weather(city: str) -> str:
    """Current weather for a city.

    Args:
        city: The city name.
    """
    return f"It is 18 degrees and sunny in {city}."
'''

TASK = "What is the weather in Paris?"

#: The embedded model picks the tool itself (see LocalModel); greedy decoding keeps the recording reproducible.
MODEL_SETTINGS: dict[str, Any] = {
    "temperature": 0.0,
}


def load_tools() -> list[Any]:
    namespace: dict[str, Any] = {}
    exec(compile(TOOLS_SOURCE, "<tools cell>", "exec"), namespace)
    return [namespace["get_weather"]]


def summary(result: Any) -> dict[str, Any]:
    return {
        "final_output": result.final_output,
        "stop_reason": result.stop_reason,
        "iterations_used": result["iterations_used"],
        "tool_calls": [(c.id, c.name, c.arguments, c.result) for it in result.iterations for c in it.tool_calls],
    }


async def run(model: Any, tools: list[Any]) -> tuple[Any, list[tuple[Any, ...]]]:
    from menglong_magic import ChatAgent
    from menglong_magic import events as ev

    fragments: list[tuple[Any, ...]] = []

    def on_event(event: Any) -> None:
        if isinstance(event, ev.TextDelta):
            fragments.append(("text", event.iteration, event.delta))
        elif isinstance(event, ev.ToolCallDelta):
            fragments.append(("tool", event.iteration, event.index, event.name, event.arguments_delta))
        elif isinstance(event, ev.Retry):
            fragments.clear()  # as the panel does: the attempt's fragments are void

    agent = ChatAgent(model=model, tools=tools, stream=True, model_settings=MODEL_SETTINGS)
    result = await agent.arun(TASK, on_event=on_event)
    return result, fragments


async def record(scratch: pathlib.Path) -> tuple[bool, int]:
    """Record into ``scratch`` and replay it: (good, number of streamed fragments)."""
    from menglong_magic.models import Recorder, Replay
    from menglong_magic.models.local import LocalModel, shutdown_local_server

    tools = load_tools()
    model = LocalModel()
    recorded, live = await run(Recorder(model, scratch, mode="w"), tools)
    shutdown_local_server()
    print(f"recorded from {model.name}: {recorded.stop_reason}, {recorded['iterations_used']} iteration(s)")
    for it in recorded.iterations:
        for c in it.tool_calls:
            print(f"  tool call {c.name}({c.arguments}) -> {c.result!r}")
    print(f"  final output: {recorded.final_output!r}")
    if recorded.stop_reason != "completed" or not any(it.tool_calls for it in recorded.iterations):
        print("the run did not complete with a tool call: cassette not replaced", file=sys.stderr)
        return False, len(live)
    replayed, again = await run(Replay(scratch), tools)
    if summary(replayed) != summary(recorded) or again != live:
        print("the fresh cassette does not replay identically: not replaced", file=sys.stderr)
        return False, len(live)
    return True, len(live)


def record_into(target: pathlib.Path) -> int:
    from menglong_magic.models import local_model_available

    if not local_model_available():
        print("the local model is not installed: pip install -e '.[local]'", file=sys.stderr)
        return 2
    fd, name = tempfile.mkstemp(prefix=target.stem + "-", suffix=".jsonl", dir=target.parent)
    os.close(fd)
    scratch = pathlib.Path(name)
    try:
        good, fragments = asyncio.run(record(scratch))
        if not good:
            return 1
        scratch.replace(target)
    finally:
        scratch.unlink(missing_ok=True)
    lines = target.read_text(encoding="utf-8").splitlines()
    print(f"wrote {target.relative_to(ROOT)}: {len(lines)} request(s), {target.stat().st_size} bytes, "
          f"{fragments} streamed fragment(s); replays identically")
    return 0


async def check(target: pathlib.Path) -> int:
    from menglong_magic.models import Replay

    replay = Replay(target)
    result, fragments = await run(replay, load_tools())
    replay.assert_all_used()
    print(f"{target.relative_to(ROOT)} (recorded from {replay.recorded_model}): {result.stop_reason}, "
          f"{result['iterations_used']} iteration(s), {len(fragments)} fragment(s); "
          f"final output {result.final_output!r}")
    return 0 if result.stop_reason == "completed" else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="weather_local", help="cassette name (notebooks/cassettes/NAME.jsonl)")
    parser.add_argument("--check", action="store_true", help="replay the existing cassette instead of recording")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    CASSETTES.mkdir(parents=True, exist_ok=True)
    target = CASSETTES / f"{args.name}.jsonl"
    return asyncio.run(check(target)) if args.check else record_into(target)


if __name__ == "__main__":
    sys.exit(main())
