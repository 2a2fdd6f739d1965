"""A tool card says which text is the arguments and which the result (a newcomer read two unlabelled JSON blocks),
and a JSON result is indented as the arguments are."""

from __future__ import annotations

import re

import pytest

from menglong_magic.ui.html import card_html
from menglong_magic.ui.state import ToolCard


def rows(html: str) -> list[tuple[str, str]]:
    """(label, text) of each labelled row, tags stripped."""
    found = re.findall(r'<span class="mm-tool-label"[^>]*>([^<]*)</span>(.*?)</div>', html, flags=re.S)
    return [(label, re.sub(r"<[^>]+>", "", inner)) for label, inner in found]


def test_arguments_and_a_json_result_are_labelled_and_indented() -> None:
    card = ToolCard("c1", "weather", {"city": "Paris"}, state="ok", duration=0.5,
                    result='{"city":"Paris","sky":"sunny","celsius":21}')
    assert rows(card_html(card)) == [
        ("arguments", '{\n  &quot;city&quot;: &quot;Paris&quot;\n}'),
        ("result", '{\n  &quot;city&quot;: &quot;Paris&quot;,\n  &quot;sky&quot;: &quot;sunny&quot;,\n'
                   '  &quot;celsius&quot;: 21\n}'),
    ]


@pytest.mark.parametrize(
    ("result", "shown"),
    [
        ("6", "6"),  # a number stays as it is
        ("It is 18 degrees and sunny in Paris.", "It is 18 degrees and sunny in Paris."),
        ("{not json", "{not json"),
        ("[]", "[]"),  # nothing to indent
        ('["a", "b"]', '[\n  &quot;a&quot;,\n  &quot;b&quot;\n]'),
        ('{"größe": "groß"}', '{\n  &quot;größe&quot;: &quot;groß&quot;\n}'),
    ],
    ids=["number", "sentence", "not-json", "empty-list", "list", "unicode"],
)
def test_only_json_objects_and_arrays_are_reindented(result: str, shown: str) -> None:
    card = ToolCard("c1", "t", {"x": 1}, state="ok", result=result)
    assert rows(card_html(card))[-1] == ("result", shown)


def test_an_error_is_labelled_error_a_tool_without_parameters_shows_no_empty_arguments() -> None:
    failed = ToolCard("c2", "fetch", {}, state="error", error="ValueError: no such page")
    assert rows(card_html(failed)) == [("error", "ValueError: no such page")]
    running = ToolCard("c3", "clock", {})
    assert rows(card_html(running)) == [] and "{}" not in card_html(running)


def test_a_long_result_stays_folded_with_its_label() -> None:
    long = '{"items": [' + ", ".join(str(i) for i in range(200)) + "]}"
    html = card_html(ToolCard("c4", "list_items", {"n": 200}, state="ok", result=long))
    assert '<span class="mm-tool-label" style="color:#6e7781;font-size:85%;min-width:5.5em">result</span>' \
           '<details class="mm-result"><summary>' in html
    assert "&quot;items&quot;: [\n    0,\n    1," in html  # the whole, indented, inside the fold
