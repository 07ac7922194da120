"""The shared SQL layer: its migrations build the released schema; values are stored as before."""

from __future__ import annotations

import sqlite3
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from ulid import ULID

from tailrunner.model import AggregateRef
from tailrunner.sql.dialect import POSTGRESQL, SQLITE
from tailrunner.sql.query import Where
from tailrunner.tails.postgres import PostgresTailStore
from tailrunner.tails.sqlite import SQLiteTailStore
from tailrunner.tails.store import TailRecord
from tests.tails.test_tail_store_backends import POSTGRES_V1, SQLITE_V1, V1_MICROS, V1_UPDATED


def a_record() -> TailRecord:
    return TailRecord(
        activity="act",
        aggregate=AggregateRef(type="thing", id=uuid.UUID(int=2**127 + 9)),
        tail=ULID.from_int(7),
        state="RETRY",
        attempts=2,
        last_error="ValueError: bad event",
        completed=True,
        updated_at=V1_UPDATED,
        failures=3,
        next_run_at=V1_UPDATED,
    )


def sqlite_schema(path: Path) -> dict[str, Any]:
    """Each table's and index's columns as SQLite reports them, not as its text spells them."""
    with sqlite3.connect(path) as conn:
        names = conn.execute(
            "SELECT type, name, tbl_name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
        ).fetchall()
        found: dict[str, Any] = {}
        for kind, name, table in names:
            pragma = "table_xinfo" if kind == "table" else "index_xinfo"
            found[name] = (kind, table, conn.execute(f"PRAGMA {pragma}({name})").fetchall())
        found["without rowid"] = conn.execute(
            "SELECT name FROM sqlite_master WHERE sql LIKE '%WITHOUT ROWID'"
        ).fetchall()
    conn.close()
    return found


async def test_sqlite_a_new_file_has_the_schema_of_a_released_file_migrated(
    tmp_path: Path,
) -> None:
    released = tmp_path / "v1.db"
    with sqlite3.connect(released) as conn:
        for statement in SQLITE_V1:
            conn.execute(statement)
    conn.close()
    fresh = tmp_path / "new.db"
    for path in (released, fresh):
        await (await SQLiteTailStore.open(path)).aclose()

    assert sqlite_schema(fresh) == sqlite_schema(released)
    assert sqlite_schema(fresh)["without rowid"] == [("tails",)]


async def test_sqlite_stores_ids_and_tails_as_bytes_and_times_as_microseconds(
    tmp_path: Path,
) -> None:
    store = await SQLiteTailStore.open(tmp_path / "tails.db")
    record = a_record()
    try:
        await store.save(record)
    finally:
        await store.aclose()
    with sqlite3.connect(tmp_path / "tails.db") as conn:
        row = conn.execute(
            "SELECT aggregate_id, tail, completed, updated_at, next_run_at FROM tails"
        ).fetchone()
    conn.close()
    assert row == (record.aggregate.id.bytes, ULID.from_int(7).bytes, 1, V1_MICROS, V1_MICROS)


def postgres_schema(url: str, schema: str) -> dict[str, Any]:
    """Columns, constraints and indexes of ``schema`` as PostgreSQL reports them."""
    with psycopg.connect(url) as conn:
        columns = conn.execute(
            "SELECT table_name, column_name, ordinal_position, data_type, is_nullable,"
            " column_default, collation_name, is_identity, identity_generation"
            " FROM information_schema.columns WHERE table_schema = %s ORDER BY 1, 3",
            (schema,),
        ).fetchall()
        constraints = conn.execute(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)"
            " FROM pg_constraint WHERE connamespace = %s::regnamespace ORDER BY 2",
            (schema,),
        ).fetchall()
        indexes = conn.execute(
            "SELECT indexname, replace(indexdef, %s, 'S') FROM pg_indexes"
            " WHERE schemaname = %s ORDER BY 1",
            (schema, schema),
        ).fetchall()
    return {
        "columns": columns,
        "constraints": [(table.rpartition(".")[2], *rest) for table, *rest in constraints],
        "indexes": indexes,
    }


async def test_postgres_a_new_schema_is_a_released_schema_migrated(
    postgres_url: str, pg_schema: str
) -> None:
    released, fresh = pg_schema, f"{pg_schema}_new"
    try:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            for statement in POSTGRES_V1:
                conn.execute(sql.SQL(statement).format(schema=sql.Identifier(released)))
        for schema in (released, fresh):
            await (await PostgresTailStore.open(postgres_url, schema=schema)).aclose()

        assert postgres_schema(postgres_url, fresh) == postgres_schema(postgres_url, released)
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            drop = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE")
            conn.execute(drop.format(sql.Identifier(fresh)))


async def test_postgres_stores_uuid_timestamptz_boolean_and_tails_as_bytes(
    postgres_url: str, pg_schema: str
) -> None:
    store = await PostgresTailStore.open(postgres_url, schema=pg_schema)
    record = a_record()
    try:
        await store.save(record)
    finally:
        await store.aclose()
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute(
            sql.SQL(
                "SELECT aggregate_id, tail, completed, updated_at, next_run_at FROM {}.tails"
            ).format(sql.Identifier(pg_schema))
        ).fetchone()
    assert row is not None
    assert row[:3] == (record.aggregate.id, ULID.from_int(7).bytes, True)
    assert [t.astimezone(UTC) for t in row[3:]] == [V1_UPDATED, V1_UPDATED]


def test_a_template_is_rendered_in_each_dialect() -> None:
    template = "SELECT {int} FROM {tails} WHERE a = ?{sqlite: -- sqlite}{postgresql: -- pg}"
    assert SQLITE.render(template) == "SELECT INTEGER FROM tails WHERE a = ? -- sqlite"
    assert POSTGRESQL.render(template) == "SELECT integer FROM {schema}.tails WHERE a = %s -- pg"
    with pytest.raises(KeyError, match="no_such_word"):
        SQLITE.render("{no_such_word}")


def test_where_joins_conditions_and_keeps_their_parameters_in_order() -> None:
    where = Where(POSTGRESQL)
    assert str(where) == ""
    where.add("a = ?", 1)
    where.add_in("state", ["X", "Y"])
    where.add("(b, c) < (?, ?)", 2, datetime(2025, 1, 1, tzinfo=UTC))
    assert str(where) == " WHERE a = %s AND state IN (%s, %s) AND (b, c) < (%s, %s)"
    assert where.params == [1, "X", "Y", 2, datetime(2025, 1, 1, tzinfo=UTC)]
