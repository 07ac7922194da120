"""Text from the runner made safe for a terminal: no control character gets through."""

from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from tailrunner.cli.terminal import last_line, printable

#: What may move the cursor, rewrite the screen or reorder what is shown.
BIDI = {
    "\u061c",
    "\u200e",
    "\u200f",
    *map(chr, range(0x202A, 0x202F)),
    *map(chr, range(0x2066, 0x206A)),
}


def unsafe(char: str, *, lines: bool) -> bool:
    if lines and char in "\n\t":
        return False
    return unicodedata.category(char) in ("Cc", "Zl", "Zp") or char in BIDI


@given(st.text())
def test_one_line_text_keeps_no_control_character_and_no_line_break(text: str) -> None:
    shown = printable(text)
    assert not any(unsafe(c, lines=False) for c in shown)
    assert "\n" not in shown


@given(st.text())
def test_multi_line_text_keeps_its_lines_and_no_other_control_character(text: str) -> None:
    shown = printable(text, lines=True)
    assert not any(unsafe(c, lines=True) for c in shown)
    assert shown.count("\n") == text.count("\n")


@given(st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cf", "Zl", "Zp"))))
def test_ordinary_text_is_shown_as_it_is(text: str) -> None:
    assert printable(text) == text


def test_escapes_name_the_character() -> None:
    assert printable("a\x1b[2Jb\x07\t\n\r\x9b\u202e") == "a\\x1b[2Jb\\x07\\t\\n\\r\\x9b\\u202e"
    assert printable("one\ntwo\tx\r", lines=True) == "one\ntwo\tx\\r"


def test_last_line_is_the_exception_of_a_traceback() -> None:
    traceback = 'Traceback (most recent call last):\n  File "x.py", line 1\nValueError: bad\n\n'
    assert last_line(traceback) == "ValueError: bad"
    assert last_line("") == ""
