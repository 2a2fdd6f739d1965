"""Math in answers reaches the typesetter verbatim: Markdown emphasis and escapes never touch a formula."""

from __future__ import annotations

import io
import re
from html import unescape

import pytest

from menglong_magic import events as ev
from menglong_magic.agent.result import RunResult
from menglong_magic.markup import NO_TYPESET, render_markdown
from menglong_magic.ui.html import final_html
from menglong_magic.ui.state import RunViewModel
from menglong_magic.ui.textview import TextView
from menglong_magic.usage import RunUsage


def finished(output: str) -> RunResult:
    return RunResult(task="x", final_output=output, stop_reason="completed", iterations=[], usage=RunUsage(),
                     execution_time=0.1)


MATH = re.compile(r'<(span|div) class="math (inline|block) mathjax_process tex2jax_process">(.*?)</\1>', re.DOTALL)


def math_spans(html: str) -> list[str]:
    return [unescape(m.group(3)) for m in MATH.finditer(html)]


@pytest.mark.parametrize("formula", [
    r"$a*b*c$",
    r"$\hat{y}_{t} = \beta_{0} + \beta_{1} x_{t}$",
    r"$\{x \mid x > 0\}$",
    r"$$\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}$$",
    r"\(a_1 * b_2 * c_3\)",
    r"\(\{x \mid x < 0\}\)",
    r"$x_1 <b>y</b>_2$",
    r"$$\sum_{i=1}^{n} x_i^2 \quad \text{and} \quad a*b*c$$",
])
def test_inline_formula_is_kept_verbatim(formula: str) -> None:
    html = render_markdown(f"The model is {formula} where it holds.")
    assert math_spans(html) == [formula]
    assert "<em>" not in html and "<b>" not in html  # no emphasis, no raw HTML from inside a formula
    assert html.startswith(f'<div class="mm-md {NO_TYPESET}">')


@pytest.mark.parametrize("formula", [
    r"$$\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}$$",
    r"$$a_1 * b_1 \\ c_{2}*d_{2}$$",
    "\\[\n\\hat{y}_{t} = \\beta_{0} + \\beta_{1} x_{t} \\\\ z_{1}*z_{2}\n\\]",
    "\\begin{align}\na_1 &= b_1 * c_1 \\\\\nd_2 &= e_2 * f_2\n\\end{align}",
])
def test_display_formula_on_its_own_lines_is_kept_verbatim(formula: str) -> None:
    html = render_markdown(f"Before:\n\n{formula}\n\nafter *this*.")
    assert math_spans(html) == [formula]
    assert html.count("<em>") == 1  # only the prose's own emphasis
    assert '<div class="math block' in html


@pytest.mark.parametrize("formula", [
    "\\[\nx_1 * y_1 \\\\ z_{2}\n\\]",
    "$$\nx_1 * y_1 \\\\ z_{2}\n$$",
    "\\[x*y\\]",
    "$$\\{a*b\\}$$",
])
def test_display_formula_inside_a_paragraph_is_kept_verbatim(formula: str) -> None:
    """Models often write display math right below a line of prose, without a blank line."""
    html = render_markdown(f"The formula is:\n{formula}\nso *that* holds.")
    assert math_spans(html) == [formula]
    assert html.count("<em>") == 1


@pytest.mark.parametrize("text", ["`\\(a*b\\)` and `\\[c*d\\]` and `$e*f$`", "```\n$$a*b$$ \\[c*d\\]\n```"])
def test_math_delimiters_in_code_stay_code(text: str) -> None:
    html = render_markdown(text)
    assert math_spans(html) == [] and "<code" in html and "*" in html


def test_several_formulas_and_prose_markdown_together() -> None:
    text = r"Take $a*b*c$ and **bold** and \(x_{1}*x_{2}\), then $\{x \mid x > 0\}$ with _em_."
    html = render_markdown(text)
    assert math_spans(html) == [r"$a*b*c$", r"\(x_{1}*x_{2}\)", r"$\{x \mid x > 0\}$"]
    assert "<strong>bold</strong>" in html and "<em>em</em>" in html


@pytest.mark.parametrize("text", [
    "It costs $5 and $10.",
    "Between $5, $7.50 or $12 a month.",
    "$100 or $200",
    "Pay $ 5 and $ 6 now",
    r"An escaped \$a*b*c\$ is text",
    "`$a*b$` is code",
])
def test_dollars_that_are_not_math_stay_text(text: str) -> None:
    """Pandoc's rule: no space just inside the dollars, no digit right after the closing one; ``\\$`` is a
    dollar; code is code. None of these becomes a math span."""
    html = render_markdown(text)
    assert math_spans(html) == []
    assert "$" in unescape(re.sub(r"<[^>]+>", "", html))


def test_formula_html_is_escaped() -> None:
    html = render_markdown(r"$x<y$ and \(a & b\) and $</span><script>alert(1)</script>$")
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert math_spans(html)[:2] == [r"$x<y$", r"\(a & b\)"]


def test_final_view_is_typeset_only_inside_math_spans() -> None:
    vm = RunViewModel("agent")
    vm.apply(ev.RunStarted("r", agent="a", model="m", mode="auto", task="price $5 and $10", max_iterations=2))
    vm.apply(ev.IterationStarted("r", iteration=1, max_iterations=2))
    vm.apply(ev.RunFinished("r", result=finished(r"So $a*b*c$ holds.")))
    html = final_html(vm)
    # The outer element opts out of typesetting (the task's "$5 and $10" is no formula), the spans opt in.
    assert re.match(rf'<div class="mm-panel mm-final mm-final-\w+ {NO_TYPESET}"', html)
    assert math_spans(html) == [r"$a*b*c$"]


def test_text_view_prints_the_source_as_is() -> None:
    out = io.StringIO()
    view = TextView("t", compact=True, stream=out)
    answer = r"$\hat{y}_{t} = \beta_{0} + \beta_{1} x_{t}$ and $$\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}$$"
    view.handle(ev.RunStarted("r", agent="a", model="m", mode="auto", task="x", max_iterations=2))
    view.handle(ev.RunFinished("r", result=finished(answer)))
    view.finish()
    assert answer in out.getvalue()
