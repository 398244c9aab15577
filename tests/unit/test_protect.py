"""Protected spans survive translation verbatim, or the loss is caught."""

from __future__ import annotations

import pytest

from ain.curate.protect import MarkerError, mask, strip_markers, unmask


def test_placeholders_numbers_code_urls_and_options_are_masked():
    text = ("<image>\nWhat is 3.5% of 42? Use `x = 1` or see https://example.org/a?b=1.\n"
            "A. ten\n(B) twelve\n```py\nprint(1)\n```")
    m = mask(text)
    assert m.spans == ("<image>", "3.5%", "42", "`x = 1`", "https://example.org/a?b=1.", "A.", "(B)",
                       "```py\nprint(1)\n```")
    assert "<image>" not in m.text and "42" not in m.text and "print" not in m.text
    assert unmask(m.text, m.spans) == text


def test_words_with_capital_a_are_not_option_letters():
    m = mask("A blue star.\nA red one.")
    assert m.spans == () and m.text == "A blue star.\nA red one."


def test_translation_with_markers_in_new_order_restores_spans():
    m = mask("<image>\nThe image says \"42\".")
    arabic = m.text.replace("The image says", "تقول الصورة")
    assert unmask(arabic, m.spans) == "<image>\nتقول الصورة \"42\"."


@pytest.mark.parametrize("broken, fragment", [
    ("تقول الصورة", "missing [0, 1]"),
    ("⟦0⟧ ⟦0⟧ ⟦1⟧", "duplicated or unknown [0]"),
    ("⟦0⟧ ⟦1⟧ ⟦7⟧", "duplicated or unknown [7]"),
])
def test_lost_duplicated_or_invented_markers_are_errors(broken, fragment):
    m = mask("<image> says 42")
    with pytest.raises(MarkerError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        unmask(broken, m.spans)


def test_bare_placeholder_is_not_translatable():
    assert not mask("<image>\n").translatable
    assert mask("<image>\nHello").translatable
    assert strip_markers("⟦0⟧\nWhat   is ⟦1⟧?") == "What is ?"
