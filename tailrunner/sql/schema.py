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
    (
        # Issue 14: the lease a run held (scale-out), so that "no task ran on
        # two runners at once" can be checked from the run log. NULL: one runner.
        "ALTER TABLE {tail_runs} ADD COLUMN owner {text}",
        "ALTER TABLE {tail_runs} ADD COLUMN epoch {bigint}",
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
    "owner",
    "epoch",
)

#: The schema version of a PostgreSQL journal store lives in this table.
JOURNAL_VERSION_TABLE = "journal_schema_version"

#: The PostgreSQL journal store's tables, as templates: the SQLite journal
#: store's (``tailrunner.journal.sqlite``, its schema 3) in PostgreSQL's
#: types. Ids are compared as bytes in both: ``uuid`` and ``bytea`` order
#: by their bytes. Append only, as :data:`TAIL_MIGRATIONS`.
JOURNAL_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        # ``head``: the newest event's id; a row exists only once its
        # aggregate has events. Appends lock it (``FOR UPDATE``): the one
        # place where two journal servers appending to one aggregate queue.
        """CREATE TABLE {aggregates} (
            id {uuid} PRIMARY KEY,
            type {text} NOT NULL,
            head {bytes} NOT NULL{postgresql: CHECK (octet_length(head) = 16)},
            event_count {bigint} NOT NULL
        ){sqlite: WITHOUT ROWID}""",
        "CREATE INDEX aggregates_by_type ON {aggregates} (type, id)",
        # ``wire``: the event as tailrunner.journal.wire_format stores it.
        """CREATE TABLE {events} (
            aggregate_id {uuid} NOT NULL,
            id {bytes} NOT NULL{postgresql: CHECK (octet_length(id) = 16)},
            wire {bytes} NOT NULL,
            PRIMARY KEY (aggregate_id, id)
        ){sqlite: WITHOUT ROWID}""",
        # ``seq`` numbers an aggregate's appends with a request id, so that
        # all but the last N are deleted; ``event_ids``: the 16-byte ids of
        # the append's events, one after the other.
        """CREATE TABLE {append_requests} (
            aggregate_id {uuid} NOT NULL,
            request_id {text} NOT NULL,
            seq {bigint} NOT NULL,
            tail {bytes} NOT NULL,
            event_ids {bytes} NOT NULL,
            PRIMARY KEY (aggregate_id, request_id)
        ){sqlite: WITHOUT ROWID}""",
        "CREATE UNIQUE INDEX append_requests_by_seq ON {append_requests} (aggregate_id, seq)",
    ),
)
