"""WHERE clauses built from optional filters, and the tail stores' status query."""

from __future__ import annotations

from collections.abc import Collection

from tailrunner.sql.dialect import Dialect
from tailrunner.tails.store import QueryCursor, require_aware, state_filter


class Where:
    """Conditions joined by ``AND``, each with its parameters, in one dialect."""

    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect
        self._conditions: list[str] = []
        #: The parameters of the conditions, in order.
        self.params: list[object] = []

    def add(self, condition: str, *params: object) -> None:
        """Add ``condition``, a template with a ``?`` for each of ``params``."""
        self._conditions.append(self._dialect.render(condition))
        self.params.extend(params)

    def add_in(self, column: str, values: Collection[object]) -> None:
        """Add ``column IN (values…)``; ``values`` must not be empty."""
        self._conditions.append(f"{column} IN ({self._dialect.params(len(values))})")
        self.params.extend(values)

    def __str__(self) -> str:
        """``" WHERE …"``, or ``""`` without conditions."""
        return " WHERE " + " AND ".join(self._conditions) if self._conditions else ""


def tail_query(
    dialect: Dialect,
    activity: str | None,
    states: Collection[str],
    limit: int,
    after: QueryCursor | None,
) -> tuple[str, list[object]]:
    """The rest of a :meth:`~tailrunner.tails.store.TailStore.query` after its ``SELECT``.

    :returns: the text after :attr:`TailStatements.select
        <tailrunner.sql.statements.TailStatements.select>` and its parameters.
    :raises InvalidArgument: ``after`` holds a naive time.
    """
    where = Where(dialect)
    if activity is not None:
        where.add("activity = ?", activity)
    if states:
        where.add_in("state", state_filter(states))
    if after is not None:
        updated_at, after_activity, after_id = after
        codec = dialect.codec
        where.add(
            "(updated_at, activity, aggregate_id) < (?, ?, ?)",
            codec.time_out(require_aware(updated_at, field="after")),
            after_activity,
            codec.uuid_out(after_id),
        )
    order = dialect.render(" ORDER BY updated_at DESC, activity DESC, aggregate_id DESC LIMIT ?")
    return f"{where}{order}", [*where.params, limit]
