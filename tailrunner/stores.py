"""Store URLs: the one syntax of ``tails.store`` and the journal's ``--store``, and one redaction.

- ``memory:`` (or ``memory://``): in this process only;
- ``sqlite:///PATH``: a SQLite file, ``sqlite:///journal.db`` relative,
  ``sqlite:////var/lib/journal.db`` absolute; the path is percent-decoded,
  and ``?key=value`` options follow it (each store says which it takes);
- ``postgresql://…`` (or ``postgres://…``): PostgreSQL, the URL handed to
  the driver as written.

:func:`parse_store_url` reads the syntax; the stores' openers
(:mod:`tailrunner.tails.open`, :mod:`tailrunner.journal.open`) choose the
store. :func:`redact` hides passwords wherever a URL is shown.
"""

from __future__ import annotations

import re
import unicodedata
import urllib.parse
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, TypeAlias

from tailrunner.errors import InvalidArgument

Scheme: TypeAlias = Literal["memory", "sqlite", "postgresql"]
SCHEMES: tuple[Scheme, ...] = ("memory", "sqlite", "postgresql")

_MEMORY = ("memory:", "memory://")
_SQLITE = "sqlite:///"
_POSTGRES = ("postgresql://", "postgres://")
# ``password=…`` in a URL's query or a libpq conninfo string; a quoted value may hold spaces.
_PASSWORD_PARAM = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]*)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class StoreUrl:
    """A store URL, read.

    :ivar scheme: which kind of store.
    :ivar path: the SQLite file (percent-decoded); ``""`` for the others.
    :ivar options: the SQLite ``?key=value`` options, in order.
    :ivar url: the URL as written (what a PostgreSQL driver is given).
    """

    scheme: Scheme
    path: str = ""
    options: tuple[tuple[str, str], ...] = ()
    url: str = ""

    def resolved(self, base_dir: Path) -> StoreUrl:
        """This URL with a relative SQLite path made absolute against ``base_dir``."""
        if self.scheme != "sqlite" or Path(self.path).is_absolute():
            return self
        return replace(self, path=str(base_dir / self.path))

    def __str__(self) -> str:
        """The URL, written the one way (``memory:``; a SQLite path encoded back)."""
        if self.scheme == "memory":
            return "memory:"
        if self.scheme == "postgresql":
            return self.url
        # Only what would change how the URL reads back is encoded: a path stays legible.
        path = self.path.replace("%", "%25").replace("?", "%3F").replace("#", "%23")
        query = urllib.parse.urlencode(self.options)
        return f"{_SQLITE}{path}{'?' if query else ''}{query}"


def parse_store_url(
    url: str, *, field: str, allowed: str, schemes: Collection[Scheme] = SCHEMES
) -> StoreUrl:
    """Read a store URL.

    :param field: what an error names (``tails.store``, ``--store`` …).
    :param allowed: what ``field`` may be, for error messages.
    :param schemes: the kinds of store the caller can open.
    :raises InvalidArgument: naming ``field`` when ``url`` is not one of
        ``schemes``, a SQLite URL names no file, or the URL (or its decoded
        path) holds a control character; the message shows the URL without
        its password.
    """
    bad = control_character(url)
    if bad is not None:
        raise InvalidArgument(field, f"{redact(url)!r}: {bad}: expected {allowed}")
    parsed: StoreUrl | None = None
    if url in _MEMORY:
        parsed = StoreUrl("memory", url=url)
    elif url.startswith(_POSTGRES):
        parsed = StoreUrl("postgresql", url=url)
    elif url.startswith(_SQLITE):
        path, _, query = url.removeprefix(_SQLITE).partition("?")
        if not path:
            raise InvalidArgument(field, f"{redact(url)!r} names no file: expected {allowed}")
        options = urllib.parse.parse_qsl(query, keep_blank_values=True)
        decoded = urllib.parse.unquote(path)
        bad = control_character(decoded)
        if bad is not None:  # e.g. %00: no file system takes it in a name
            raise InvalidArgument(field, f"{redact(url)!r}: the path {bad}: expected {allowed}")
        parsed = StoreUrl("sqlite", decoded, tuple(options), url)
    if parsed is None or parsed.scheme not in schemes:
        raise InvalidArgument(field, f"{redact(url)!r} is not a store URL: expected {allowed}")
    return parsed


def control_character(text: str) -> str | None:
    """What is wrong when ``text`` holds a control character (NUL, a newline, ESC …), else ``None``.

    A store URL or file name never holds one; a NUL crashes the drivers and
    the others are mistakes (or hide what the URL really says on a terminal).
    """
    for offset, char in enumerate(text):
        if unicodedata.category(char) in ("Cc", "Cs"):
            return f"holds a control character (U+{ord(char):04X} at offset {offset})"
    return None


def store_options(
    store: StoreUrl, *, field: str, choices: Mapping[str, Collection[str]]
) -> dict[str, str]:
    """The URL's options, each checked against the values ``choices`` allows for it.

    Values are compared without case and returned in upper case
    (``synchronous=normal`` → ``NORMAL``).

    :param choices: each option the store takes and its allowed values (upper case).
    :raises InvalidArgument: naming ``field`` for an unknown option or value.
    """
    found: dict[str, str] = {}
    shown = redact(store.url)
    for key, value in store.options:
        if key not in choices:
            if not choices:
                takes = "it takes no options"
            elif len(choices) == 1:
                takes = f"the one option is {next(iter(choices))}"
            else:
                takes = f"the options are {', '.join(choices)}"
            raise InvalidArgument(field, f"unknown option {key!r} in {shown!r}: {takes}")
        if value.upper() not in choices[key]:
            raise InvalidArgument(
                field, f"{key}={value!r} in {shown!r}: expected one of {', '.join(choices[key])}"
            )
        found[key] = value.upper()
    return found


def redact(text: str) -> str:
    """``text`` (a URL or a libpq ``key=value`` string) with any password replaced by ``***``.

    Both a URL's ``user:password@`` and a ``password=…`` parameter (a URL's
    ``?password=`` or a conninfo's) are hidden; the rest stays as written.
    """
    scheme, sep, rest = text.partition("://")
    if sep:
        end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
        userinfo, at, hosts = rest[:end].rpartition("@")
        if at and ":" in userinfo:
            rest = f"{userinfo.split(':', 1)[0]}:***@{hosts}{rest[end:]}"
        text = f"{scheme}{sep}{rest}"
    return _PASSWORD_PARAM.sub(r"\1***", text)
