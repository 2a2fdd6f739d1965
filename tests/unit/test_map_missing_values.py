"""Gaps in data: missing values are empty fields in map prompts, and a format spec over one fails that item."""

from __future__ import annotations

import decimal
import math

import pytest

from menglong_magic.maps.run import (
    MISSING_TEXT,
    MapItemError,
    PromptFormatError,
    _prompts,
    format_prompt,
    input_rows,
    is_missing,
)

pd = pytest.importorskip("pandas")
np = pytest.importorskip("numpy")

NEVER = ("nan", "NaN", "NaT", "<NA>", "None")


def gap_frame() -> pd.DataFrame:
    """One column per dtype; row 1 is missing in every column, row 2 has data again."""
    return pd.DataFrame({
        "stars": pd.Series([4.5, np.nan, 3.0], dtype="float64"),
        "date": pd.to_datetime(["2024-01-02", None, "2024-03-04"]),
        "kind": pd.Categorical(["book", None, "film"]),
        "count": pd.array([7, None, 2], dtype="Int64"),
        "author": pd.Series(["ann", None, "bo"], dtype="object"),
        "text": pd.array(["good", pd.NA, "fine"], dtype="string"),
        "flag": pd.array([True, None, False], dtype="boolean"),
    })


TEMPLATE = "{author} on {date} ({stars} stars, {count}x, {kind}, {flag}): {text}"


def test_every_dtype_renders_missing_as_an_empty_field() -> None:
    rows, _labels, _name = input_rows(gap_frame())
    prompts, failures = _prompts(TEMPLATE, rows, None)
    assert failures == {}
    assert prompts[0] == "ann on 2024-01-02 00:00:00 (4.5 stars, 7x, book, True): good"
    assert prompts[1] == " on  ( stars, x, , ): "
    assert prompts[2] == "bo on 2024-03-04 00:00:00 (3.0 stars, 2x, film, False): fine"
    for prompt in prompts:
        assert not any(token in prompt for token in NEVER), prompt


@pytest.mark.parametrize("column", ["stars", "date", "kind", "count", "author", "text", "flag"])
def test_each_dtype_alone(column: str) -> None:
    frame = gap_frame()[[column]]
    prompts, failures = _prompts(f"[{{{column}}}]", input_rows(frame)[0], None)
    assert failures == {} and prompts[1] == "[]"
    series_prompts, _ = _prompts("[{}|{input}]", input_rows(frame[column])[0], column)
    assert series_prompts[1] == "[|]" and not any(t in series_prompts[1] for t in NEVER)


def test_a_category_outside_the_categories_is_missing() -> None:
    kinds = pd.Series(pd.Categorical(["book", "film"])).cat.remove_categories(["film"])  # "film" → NaN
    assert _prompts("kind={kind}", [{"kind": v} for v in kinds.tolist()], None)[0] == ["kind=book", "kind="]


@pytest.mark.parametrize("value", [None, math.nan, float("nan"), np.nan, np.float32("nan"), pd.NaT, pd.NA,
                                   np.datetime64("NaT"), np.timedelta64("NaT"), decimal.Decimal("NaN")])
def test_missing_scalars(value: object) -> None:
    assert is_missing(value)
    assert format_prompt("<{x}>", {"x": value}) == f"<{MISSING_TEXT}>"
    assert format_prompt("<{x!s}|{x!r}>", {"x": value}) == "<|>"
    assert format_prompt(None, value) == MISSING_TEXT and format_prompt("<{input}>", value) == "<>"


@pytest.mark.parametrize("value", [0, 0.0, "", "nan", "None", False, [], {}, [np.nan], np.array([np.nan]),
                                   pd.Timestamp("2024-01-01"),
                                   np.float64(1.5), np.int64(0), decimal.Decimal("1.5")])
def test_present_values_are_not_missing(value: object) -> None:
    assert not is_missing(value)


@pytest.mark.parametrize(("template", "value", "spec"), [
    ("{date:%Y-%m-%d}", pd.NaT, "%Y-%m-%d"),
    ("{stars:.1f}", np.nan, ".1f"),
    ("{count:d}", pd.NA, "d"),
    ("{author:>10}", None, ">10"),
])
def test_a_format_spec_over_a_missing_value_is_a_prompt_error(template: str, value: object, spec: str) -> None:
    with pytest.raises(PromptFormatError, match=f"is missing .* format spec '{spec}'"):
        format_prompt(template, {"date": value, "stars": value, "count": value, "author": value})


def test_format_spec_failures_are_the_items_errors_only() -> None:
    rows, _labels, _name = input_rows(gap_frame())
    prompts, failures = _prompts("on {date:%Y-%m-%d}: {stars:.1f} {text}", rows, None)
    assert prompts == ["on 2024-01-02: 4.5 good", "", "on 2024-03-04: 3.0 fine"]
    assert list(failures) == [1]
    error = failures[1]
    assert isinstance(error, MapItemError) and error.stop_reason == "prompt_format"
    assert "item 1" in str(error) and "'date'" in str(error) and "NaT" in str(error)


def test_a_mistyped_value_is_that_items_error_and_a_missing_field_the_templates() -> None:
    prompts, failures = _prompts("n={n:d}", [{"n": 1}, {"n": "two"}, {"n": 3}], None)
    assert prompts == ["n=1", "", "n=3"] and list(failures) == [1]
    with pytest.raises(KeyError, match="'nme' is not a field"):
        _prompts("{nme}", [{"name": "x"}], None)


async def test_agent_map_magic_runs_a_map_whose_first_row_cannot_be_formatted(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The magic checks the template on the first row before the map: a NaT there is that item's error, not a
    usage error; a field the rows lack still is one."""
    from IPython.core.interactiveshell import InteractiveShell

    monkeypatch.setenv("MENGLONG_MODEL", "offline")
    shell = InteractiveShell.instance()
    shell.reset()
    shell.run_line_magic("load_ext", "menglong_magic")
    try:
        shell.run_cell("import pandas as pd\nfrom menglong_magic import ChatAgent\n"
                       "from menglong_magic.models import ScriptedModel\n"
                       "bot = ChatAgent(model=ScriptedModel([lambda r: r.messages[-1]['content'].upper()] * 2))\n"
                       "rows = pd.DataFrame({'date': pd.to_datetime([None, '2024-01-02']), 'text': ['a', None]})")
        code = "%agent_map -a bot -q -o out rows On {date:%Y-%m-%d}: [{text}]"
        res = await shell.run_cell_async(code, transformed_cell=shell.transform_cell(code))
        assert res.error_in_exec is None
        out = shell.user_ns["out"]
        assert list(out.errors) == [0] and out[1] == "ON 2024-01-02: []"
        code = "%agent_map -a bot -q rows On {nofield}"
        res = await shell.run_cell_async(code, transformed_cell=shell.transform_cell(code))
        assert type(res.error_in_exec).__name__ == "UsageError" and "nofield" in str(res.error_in_exec)
    finally:
        shell.run_line_magic("unload_ext", "menglong_magic")
