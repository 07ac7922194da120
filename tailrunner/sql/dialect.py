"""``Dialect``: how SQLite and PostgreSQL spell the same statement.

A statement is written once, as a template: ``{name}`` words that differ
between the databases (types, qualified table names, options) and ``?`` for
each parameter. :meth:`Dialect.render` fills the words in and swaps ``?``
for the dialect's paramstyle. ``{sqlite:TEXT}`` and ``{postgresql:TEXT}``
keep ``TEXT`` in that dialect only.

PostgreSQL's rendered text keeps ``{schema}`` in its table names: the store
fills it with the quoted schema name (``psycopg.sql.SQL(text).format(
schema=Identifier(name))``), as a schema name is known only when a store
opens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from tailrunner.sql.codecs import POSTGRESQL_CODEC, SQLITE_CODEC, Codec

DialectName = Literal["sqlite", "postgresql"]

#: The tables of every store, by template word: ``{tails}`` is the table
#: ``tails`` (``{schema}.tails`` in PostgreSQL).
TABLES = (
    "tails",
    "tail_runs",
    "tails_schema_version",
    # The PostgreSQL journal store's (tailrunner.sql.schema.JOURNAL_MIGRATIONS).
    "aggregates",
    "events",
    "append_requests",
    "journal_schema_version",
)


class _Only:
    """``{sqlite:TEXT}``: ``TEXT`` where the dialect is the one named, else nothing."""

    __slots__ = ("_active",)

    def __init__(self, active: bool) -> None:
        self._active = active

    def __format__(self, text: str) -> str:
        return text if self._active else ""


@dataclass(frozen=True, slots=True)
class Dialect:
    """One database's words, paramstyle and value codec."""

    name: DialectName
    #: What stands for a parameter: ``?`` (sqlite3) or ``%s`` (psycopg).
    param: str
    #: How a table name is written: ``{table}`` is the bare name.
    qualified: str
    #: The column types and other words of the templates.
    words: Mapping[str, str]
    #: How ids, times and flags are stored.
    codec: Codec
    _all: Mapping[str, object] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        every: dict[str, object] = {t: self.qualified.format(table=t) for t in TABLES}
        every.update(self.words)
        for name in ("sqlite", "postgresql"):
            every[name] = _Only(name == self.name)
        object.__setattr__(self, "_all", every)

    def render(self, template: str) -> str:
        """``template`` in this dialect: its words filled in, ``?`` in its paramstyle.

        :raises KeyError: naming a word the dialect does not know.
        """
        return template.format_map(self._all).replace("?", self.param)

    def params(self, count: int) -> str:
        """``count`` parameters, comma-separated (for ``IN (…)``)."""
        return ", ".join([self.param] * count)


SQLITE = Dialect(
    name="sqlite",
    param="?",
    qualified="{table}",
    words={
        "text": "TEXT",
        # Activities sort by bytes in every store: SQLite's default collation.
        "sorted_text": "TEXT",
        "uuid": "BLOB",
        "bytes": "BLOB",
        "int": "INTEGER",
        "bigint": "INTEGER",
        "bool": "INTEGER",
        # Microseconds since the epoch (see codecs).
        "time": "INTEGER",
        "serial_key": "INTEGER PRIMARY KEY",
    },
    codec=SQLITE_CODEC,
)

POSTGRESQL = Dialect(
    name="postgresql",
    param="%s",
    qualified="{{schema}}.{table}",
    words={
        "text": "text",
        "sorted_text": 'text COLLATE "C"',
        "uuid": "uuid",
        "bytes": "bytea",
        "int": "integer",
        "bigint": "bigint",
        "bool": "boolean",
        "time": "timestamptz",
        "serial_key": "bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    },
    codec=POSTGRESQL_CODEC,
)
