"""Text from the journal or an activity, made safe to show on a terminal.

Error messages, tracebacks, activity names and aggregate types come from
plugins and from the journal: an escape sequence in one could move the
cursor, rewrite what an operator sees, or set the window title, and a
bidirectional override could show text other than what it is. Every such
character is shown as its escape instead (``\\x1b``, ``\\u202e``).

:func:`printable` is for plain output (``click.echo``, an error message);
:func:`cell` for what Rich prints, which also must not read the text as
markup (an error text with ``[/bold]`` in it would stop the table with a
``MarkupError``, and ``[red]…[/red]`` would be styled instead of shown).
JSON output needs neither: :func:`json.dumps` writes every control
character as ``\\u00XX`` and keeps the value as it is.
"""

from __future__ import annotations

import re

from rich.text import Text

# C0 controls, DEL and C1 controls; the line and paragraph separators; the
# bidirectional marks, embeddings, overrides and isolates.
_UNSAFE_OUTSIDE_LINES = "\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069"
_UNSAFE = re.compile(f"[{_UNSAFE_OUTSIDE_LINES}]")
_UNSAFE_IN_A_LINE = re.compile(f"[\t\n{_UNSAFE_OUTSIDE_LINES}]")
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def printable(text: str, *, lines: bool = False) -> str:
    """``text`` with every control character replaced by its escape.

    :param lines: keep line breaks and tabs (a traceback); otherwise they are
        escaped too, so that the text stays on one line (a table cell).
    """
    pattern = _UNSAFE if lines else _UNSAFE_IN_A_LINE
    return pattern.sub(_escape, text)


def cell(text: str, *, lines: bool = False) -> Text:
    """``text`` for Rich (a table cell, a line): escaped, and never read as markup."""
    return Text(printable(text, lines=lines))


def last_line(text: str) -> str:
    """The last non-blank line of ``text`` (a traceback's exception), stripped."""
    for line in reversed(text.splitlines()):
        if line.strip():
            return line.strip()
    return ""


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
