"""The tail stores' tables, written once for SQLite and PostgreSQL.

:data:`TAIL_MIGRATIONS` are templates (see :mod:`tailrunner.sql.dialect`);
``TAIL_MIGRATIONS[i]`` takes a store from schema version ``i`` to ``i + 1``.
Append only; never edit a released one: rendered, each must stay the very
statements that tailrunner ran when it was released (the stores' tests
build the version-1 files and schemas by hand to hold them to that).
"""

from __future__ import annotations

#: The schema version of a store lives in this table (not in ``PRAGMA
#: user_version``, so that a SQLite file may also hold the journal's tables).
TAILS_VERSION_TABLE = "tails_schema_version"

TAIL_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        # sorted_text: activities sort by bytes, as in the memory store.
        """CREATE TABLE {tails} (
            activity {sorted_text} NOT NULL,
            aggregate_id {uuid} NOT NULL,
            aggregate_type {text} NOT NULL,
            tail {bytes}{postgresql: CHECK (octet_length(tail) = 16)},
            state {text} NOT NULL,
            attempts {int} NOT NULL,
            last_error {text},
            completed {bool} NOT NULL,
            updated_at {time} NOT NULL,
            PRIMARY KEY (activity, aggregate_id)
        ){sqlite: WITHOUT ROWID}""",
        # For the status view (query): newest updated first, overall or by state.
        "CREATE INDEX tails_by_updated ON {tails} (updated_at, activity, aggregate_id)",
        "CREATE INDEX tails_by_state ON {tails} (state, updated_at, activity, aggregate_id)",
        """CREATE TABLE {tail_runs} (
            seq {serial_key},
            activity {sorted_text} NOT NULL,
            aggregate_id {uuid} NOT NULL,
            aggregate_type {text} NOT NULL,
            attempt {int} NOT NULL,
            started_at {time} NOT NULL,
            finished_at {time} NOT NULL,
            tail_before {bytes},
            tail_after {bytes},
            events_seen {bigint} NOT NULL,
            outcome {text} NOT NULL,
            error {text}
        )""",
        "CREATE INDEX tail_runs_by_task ON {tail_runs} (activity, aggregate_id, seq)",
    ),
    (
        # Issue 10: the backoff exponent and the next try's time survive a
        # restart. Older rows read as "no failures, no time due".
        "ALTER TABLE {tails} ADD COLUMN failures {int} NOT NULL DEFAULT 0",
        "ALTER TABLE {tails} ADD COLUMN next_run_at {time}",
    ),
)

#: The columns of ``tails``, in the order of :class:`~tailrunner.sql.codecs.TailRows`.
TAIL_COLUMNS = (
    "activity",
    "aggregate_id",
    "aggregate_type",
    "tail",
    "state",
    "attempts",
    "last_error",
    "completed",
    "updated_at",
    "failures",
    "next_run_at",
)
#: The key of ``tails``.
TAIL_KEY = ("activity", "aggregate_id")

#: The columns of ``tail_runs`` a run sets (``seq`` numbers them), in the
#: order of :class:`~tailrunner.sql.codecs.TailRows`.
RUN_COLUMNS = (
    "activity",
    "aggregate_id",
    "aggregate_type",
    "attempt",
    "started_at",
    "finished_at",
    "tail_before",
    "tail_after",
    "events_seen",
    "outcome",
    "error",
)
