"""Fencing: a write that lands only while its segment's lease is still held.

In the SQL layer because the tail stores fence their own statements;
:mod:`tailrunner.scaleout` claims and renews the leases.

A runner that paused past its lease (SIGSTOP, a long GC, a cut network)
may wake up still believing it owns a segment that another runner has
claimed since. Its writes must then change nothing. So every write a
runner makes for a segment's task carries the lease it holds (segment,
owner, epoch) and checks it in the *same statement*, against the
database's clock::

    ... WHERE <the write's own condition> AND {fence}

where ``{fence}`` is :meth:`Fence.condition`: the lease row exists with
that owner and epoch and has not expired, locked ``FOR SHARE``. The lock
matters: a claimer locks rows ``FOR UPDATE SKIP LOCKED``, so while a
fenced write's transaction is open the segment cannot change hands, and
its new owner reads the tail only after that write committed (or rolled
back). A statement that inserts writes ``INSERT … SELECT … WHERE {fence}``.

Keep one segment per transaction: two transactions that fence writes on
two segments in opposite orders, against a renewal that updates both, can
deadlock (PostgreSQL breaks it by failing one after a second).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import structlog
from psycopg import sql

from tailrunner.errors import InvalidArgument

log = structlog.get_logger(__name__)

#: The segment-lease table (in the store's schema); :mod:`tailrunner.scaleout.schema` creates it.
LEASE_TABLE = "segment_leases"


@dataclass(frozen=True, slots=True, kw_only=True)
class Fence:
    """The lease a write must still hold: segment, owner (incarnation) and epoch."""

    #: The schema of the lease table.
    schema: str
    segment: int
    owner: str
    epoch: int
    #: Seconds the lease lasts: a fenced transaction is cut off by the server
    #: if it sits idle this long holding the lease row (a host that vanished
    #: mid-write must not keep the segment from being claimed).
    lease: float | None = None

    def hold_limit(self) -> sql.Composed | None:
        """``SET LOCAL`` that bounds how long a transaction may sit on the lease row."""
        if self.lease is None:
            return None
        return sql.SQL("SET LOCAL idle_in_transaction_session_timeout = {}").format(
            sql.Literal(max(1, round(self.lease * 1000)))
        )

    def condition(self) -> sql.Composed:
        """The SQL condition "this lease is still held", values inlined as literals.

        Literals, not parameters, so it fits anywhere in a statement without
        shifting the statement's own ``%s`` parameters.
        """
        return sql.SQL(
            "EXISTS (SELECT 1 FROM {table} WHERE segment = {segment} AND owner = {owner}"
            " AND epoch = {epoch} AND expires_at > statement_timestamp() FOR SHARE)"
        ).format(
            table=sql.Identifier(self.schema, LEASE_TABLE),
            segment=sql.Literal(self.segment),
            owner=sql.Literal(self.owner),
            epoch=sql.Literal(self.epoch),
        )


class FencedWrites:
    """How many writes the fence stopped, overall and by segment (a metric)."""

    def __init__(self) -> None:
        self._by_segment: Counter[int] = Counter()

    def record(self, fence: Fence) -> None:
        """Count one write that ``fence`` stopped."""
        self._by_segment[fence.segment] += 1

    @property
    def total(self) -> int:
        """Writes stopped, in all segments."""
        return sum(self._by_segment.values())

    def by_segment(self) -> dict[int, int]:
        """Writes stopped, by segment (only segments with some)."""
        return dict(self._by_segment)


async def fenced(
    conn: psycopg.AsyncConnection[Any],
    fence: Fence,
    statement: str,
    params: Sequence[object] | Mapping[str, object] = (),
    *,
    writes: FencedWrites | None = None,
    **parts: sql.Composable,
) -> bool:
    """Run the write ``statement`` only if ``fence``'s lease is still held; whether it ran.

    :param statement: the write, holding ``{fence}`` where the lease's
        condition goes (``UPDATE t SET … WHERE k = %s AND {fence}``,
        ``INSERT INTO t … SELECT %s, %s WHERE {fence} ON CONFLICT …``);
        ``{schema}`` is the lease table's schema (quoted), and ``parts``
        fill any other ``{name}``.
    :param writes: counts the write when the fence stopped it.
    :returns: ``False`` exactly when the lease was no longer held, so
        nothing was written (counted in ``writes``, logged): the caller
        must stop that segment's tasks. ``True`` when the statement ran
        under the lease, even if its own condition matched no row.
    :raises InvalidArgument: a statement without ``{fence}``.
    :raises psycopg.Error: as the statement raises it (the caller maps it).
    """
    if "{fence}" not in statement:
        raise InvalidArgument(
            "statement", f"{statement!r}: a fenced write must hold {{fence}} in its condition"
        )
    query = sql.SQL(statement).format(
        fence=fence.condition(), schema=sql.Identifier(fence.schema), **parts
    )
    cursor = await conn.execute(query, params)
    if cursor.rowcount > 0:
        return True
    # Nothing written: the fence, or the statement's own condition? The
    # lease decides; lost since is on the safe side (the segment stops).
    check = await conn.execute(sql.SQL("SELECT {fence}").format(fence=fence.condition()))
    row = await check.fetchone()
    if row is not None and row[0]:
        return True
    if writes is not None:
        writes.record(fence)
    log.warning("fenced", segment=fence.segment, owner=fence.owner, epoch=fence.epoch)
    return False
