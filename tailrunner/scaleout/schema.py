"""The segment-lease table in PostgreSQL, and its migrations.

One row per segment, created up front (``0 … segments - 1``), so a claim
is an ``UPDATE`` of existing rows and never races an ``INSERT``. A free
segment has no owner and no expiry; its epoch stays, so the next claim
bumps it past every epoch the segment had before.

The migrations run through :func:`tailrunner.sql.migrate.migrate`, with
their own version table, so a schema may also hold the journal's and the
tails' tables. ``MIGRATIONS[i]`` takes a schema from version ``i`` to
``i + 1``; append only, never edit a released one.
"""

from __future__ import annotations

from dataclasses import replace

from tailrunner.sql.dialect import POSTGRESQL, Dialect
from tailrunner.sql.fencing import LEASE_TABLE

#: The segment leases (unqualified: it lives in the store's schema).
TABLE = LEASE_TABLE
#: Its schema version (one row).
VERSION_TABLE = "segment_leases_schema_version"
#: The runners alive, each announced on every heartbeat (so a runner that
#: holds nothing yet still counts in everyone's fair share).
RUNNERS_TABLE = "segment_runners"

#: PostgreSQL's words, and the two table names above: ``{segment_leases}``
#: renders as ``{schema}.segment_leases``, the schema filled in on open.
DIALECT: Dialect = replace(
    POSTGRESQL,
    words={
        **POSTGRESQL.words,
        TABLE: f"{{schema}}.{TABLE}",
        VERSION_TABLE: f"{{schema}}.{VERSION_TABLE}",
        RUNNERS_TABLE: f"{{schema}}.{RUNNERS_TABLE}",
    },
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        DIALECT.render(
            """CREATE TABLE {segment_leases} (
                segment integer PRIMARY KEY CHECK (segment >= 0 AND segment < 4096),
                owner text,
                epoch bigint NOT NULL DEFAULT 0 CHECK (epoch >= 0),
                expires_at timestamptz,
                acquired_at timestamptz,
                CHECK ((owner IS NULL) = (expires_at IS NULL))
            )"""
        ),
    ),
    (
        # A runner joining a cluster whose segments are all held must still
        # count, or nobody would give it any: presence apart from leases.
        DIALECT.render(
            """CREATE TABLE {segment_runners} (
                owner text PRIMARY KEY,
                started_at timestamptz NOT NULL,
                expires_at timestamptz NOT NULL,
                about text NOT NULL DEFAULT ''
            )"""
        ),
        # Every beat counts the live runners; the prune deletes the long gone.
        DIALECT.render("CREATE INDEX segment_runners_by_expiry ON {segment_runners} (expires_at)"),
    ),
)
