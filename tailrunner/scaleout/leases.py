"""``SegmentLeases``: one runner's leases on segments, in PostgreSQL.

Every runner of a cluster claims segments (:mod:`tailrunner.scaleout.segments`)
in one table (:mod:`tailrunner.scaleout.schema`) and runs only the tasks of
the segments it holds. A lease has:

- an **owner**: the runner's incarnation id, a fresh ``uuid4`` per
  :class:`SegmentLeases` (one per runner process), never the hostname, so a
  restarted runner never mistakes its predecessor's leases for its own;
- an **epoch**, bumped by every claim, so a write fenced with an old epoch
  (:mod:`tailrunner.sql.fencing`) can never land after a new claim;
- an **expiry** from the *database's* clock (``now() + lease``), so the
  runners' clocks never have to agree.

Each statement stands alone (autocommit): no session or advisory locks,
which break behind pgbouncer in transaction mode. A claim is one ``UPDATE``
of rows picked ``FOR UPDATE SKIP LOCKED``, so two claimers never take the
same segment. Renewals extend only the leases still held with the same
epoch; the rest are lost and reported (``on_lost``).

The runner must stop a segment's tasks *before* another runner can claim
it. The database cannot tell a paused or cut-off runner, so each lease
also has a local ``deadline`` on the monotonic clock: the time the claim
or renewal was sent plus the lease, minus a stop margin (one heartbeat).
The database's ``now()`` is later than that send, so the lease cannot
expire before the deadline plus the margin; past the deadline without a
renewal the heartbeat reports the lease lost, leaving the margin to stop
its tasks. The fencing catches whatever still slips through.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio
import psycopg
import structlog
from anyio.abc import TaskStatus
from psycopg import sql
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from tailrunner.errors import InvalidArgument, StoreError
from tailrunner.scaleout.balance import DEFAULT_SLACK, fair_share
from tailrunner.scaleout.schema import DIALECT, MIGRATIONS, RUNNERS_TABLE, TABLE, VERSION_TABLE
from tailrunner.scaleout.segments import DEFAULT_SEGMENTS, check_segments
from tailrunner.sql.fencing import Fence
from tailrunner.sql.migrate import migrate
from tailrunner.sql.postgres import PostgresMigration, reason

log = structlog.get_logger(__name__)

Connection = psycopg.AsyncConnection[TupleRow]

DEFAULT_SCHEMA = "tailrunner"
#: Seconds a lease lasts unless renewed.
DEFAULT_LEASE = 15.0
#: The longest lease allowed: a dead runner's segments wait this long.
MAX_LEASE = 3600.0

#: The migration's advisory lock class ("segm"); the second key is the schema's hash.
#: A transaction-level lock, held only while migrating: fine behind pgbouncer.
_LOCK_CLASS = 0x7365676D

_CLAIM = """
WITH picked AS MATERIALIZED (
    SELECT segment, owner AS previous_owner FROM {table}
    WHERE (owner IS NULL OR expires_at <= now())
      AND segment < %(segments)s
      AND NOT (segment = ANY(%(held)s::integer[]))
    ORDER BY segment
    LIMIT %(count)s
    FOR UPDATE SKIP LOCKED
)
UPDATE {table} AS s
SET owner = %(owner)s, epoch = s.epoch + 1,
    expires_at = now() + make_interval(secs => %(lease)s), acquired_at = now()
FROM picked
WHERE s.segment = picked.segment AND (s.owner IS NULL OR s.expires_at <= now())
RETURNING s.segment, s.epoch, s.acquired_at, s.expires_at, picked.previous_owner
"""

_RENEW = """
UPDATE {table} AS s
SET expires_at = now() + make_interval(secs => %(lease)s)
FROM unnest(%(segments)s::integer[], %(epochs)s::bigint[]) AS held(segment, epoch)
WHERE s.segment = held.segment AND s.epoch = held.epoch
  AND s.owner = %(owner)s AND s.expires_at > now()
RETURNING s.segment, s.epoch, s.acquired_at, s.expires_at
"""

_RELEASE = """
UPDATE {table} AS s
SET owner = NULL, expires_at = NULL, acquired_at = NULL
FROM unnest(%(segments)s::integer[], %(epochs)s::bigint[]) AS held(segment, epoch)
WHERE s.segment = held.segment AND s.epoch = held.epoch AND s.owner = %(owner)s
RETURNING s.segment
"""

# Only into an empty table: a runner set to more segments must not grow
# the table under runners that hash tasks into fewer.
_CREATE_ROWS = """
INSERT INTO {table} (segment)
SELECT generate_series(0, %(segments)s - 1) WHERE NOT EXISTS (SELECT 1 FROM {table})
ON CONFLICT (segment) DO NOTHING
"""

_COUNT_ROWS = "SELECT count(*), coalesce(max(segment), -1) FROM {table}"

_TABLE = """
SELECT segment, owner, epoch, acquired_at, expires_at,
       owner IS NOT NULL AND expires_at > now()
FROM {table} ORDER BY segment
"""

# Lease holders and announced runners: a newcomer holding nothing counts too.
_LIVE = """
SELECT count(DISTINCT owner) FROM (
    SELECT owner FROM {table} WHERE owner IS NOT NULL AND expires_at > now()
    UNION ALL
    SELECT owner FROM {runners} WHERE expires_at > now()
) AS alive
WHERE owner <> %(owner)s
"""

_ANNOUNCE = """
INSERT INTO {runners} (owner, started_at, expires_at, about)
VALUES (%(owner)s, now(), now() + make_interval(secs => %(lease)s), %(about)s)
ON CONFLICT (owner) DO UPDATE SET expires_at = excluded.expires_at, about = excluded.about
"""

# A runner's own row on a clean stop, and rows long expired (crashed runners).
_LEAVE = """
DELETE FROM {runners}
WHERE owner = %(owner)s OR expires_at < now() - make_interval(secs => %(keep)s)
"""

_PRUNE = "DELETE FROM {runners} WHERE expires_at < now() - make_interval(secs => %(keep)s)"

_RUNNERS = """
SELECT owner, started_at, expires_at, about, expires_at > now() FROM {runners}
WHERE expires_at > now() - make_interval(secs => %(keep)s)
ORDER BY started_at, owner
"""

#: Seconds an expired runner's row is kept (``tailrunner status`` shows it as gone).
_KEEP_GONE = 3600.0


def new_incarnation() -> str:
    """A fresh incarnation id: who owns a lease, unique to one runner process's lifetime."""
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True, kw_only=True)
class Lease:
    """A segment this runner holds, as the last claim or renewal left it."""

    segment: int
    #: The incarnation id of the runner holding it.
    owner: str
    #: Bumped by each claim; a write fenced with it fails once anyone re-claims.
    epoch: int
    #: When this epoch's claim was made (database clock).
    acquired_at: datetime
    #: When the lease runs out unless renewed (database clock).
    expires_at: datetime
    #: By this local monotonic time (``anyio.current_time()``) the runner
    #: must have stopped the segment's tasks unless the lease was renewed.
    deadline: float = field(compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class SegmentRow:
    """One row of the lease table, for ``tailrunner status``."""

    segment: int
    #: The holder's incarnation id; ``None`` when free.
    owner: str | None
    epoch: int
    #: Since when the holder has held it (database clock); ``None`` when free.
    since: datetime | None
    expires_at: datetime | None
    #: Held and not expired (by the database's clock, at the query).
    live: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class RunnerRow:
    """One runner of the cluster, as it announced itself (for ``tailrunner status``)."""

    owner: str
    started_at: datetime
    #: When its presence runs out unless it announces itself again.
    expires_at: datetime
    #: What it said about itself: host, pid, engine.
    about: str
    live: bool


@dataclass(slots=True)
class LeaseStats:
    """Counters for the runner's metrics."""

    #: Renewals that reached the database.
    heartbeats: int = 0
    #: Renewals that failed (the database unreachable or refusing).
    heartbeat_failures: int = 0
    #: Segments claimed (each claim of one segment counts once).
    claimed: int = 0
    #: Of those, segments taken over from another runner whose lease expired.
    rescued: int = 0
    #: Segments lost: not renewed in time, taken over, or given up after a fenced write.
    lost: int = 0
    #: Segments released (handed back between runs).
    released: int = 0


LostCallback = Callable[[Sequence[Lease]], None]


class SegmentLeases:
    """One runner's leases on the segments in ``schema``'s lease table.

    Open it with :meth:`open`. The pool's connections must be in autocommit
    mode: every statement here is its own transaction.

    :param on_lost: called with the leases lost, whenever some are: a
        renewal that did not keep them, a local deadline passed, or
        :meth:`drop`. It must start stopping those segments' tasks and not
        block (it runs inside the heartbeat).
    """

    def __init__(
        self,
        pool: AsyncConnectionPool[Connection],
        *,
        schema: str = DEFAULT_SCHEMA,
        segments: int = DEFAULT_SEGMENTS,
        lease: float = DEFAULT_LEASE,
        heartbeat: float | None = None,
        on_lost: LostCallback | None = None,
        incarnation: str | None = None,
    ) -> None:
        """Use :meth:`open` instead: it creates the table and the segments' rows."""
        if not schema:
            raise InvalidArgument("schema", "the schema name must not be empty")
        self._segments = check_segments(segments)
        if not 0 < lease <= MAX_LEASE:
            raise InvalidArgument(
                "lease", f"{lease!r} seconds: expected more than 0, at most {MAX_LEASE:g}"
            )
        beat = lease / 3 if heartbeat is None else heartbeat
        if not 0 < beat < lease:
            raise InvalidArgument(
                "heartbeat",
                f"{beat!r} seconds: expected more than 0 and less than the lease ({lease:g})",
            )
        if incarnation is not None and not incarnation:
            raise InvalidArgument("incarnation", "the incarnation id must not be empty")
        self._pool = pool
        self._schema = schema
        self._lease = float(lease)
        self._heartbeat = float(beat)
        #: Called with the leases lost (see the class docstring); may be set after opening.
        self.on_lost = on_lost
        self._owner = incarnation or new_incarnation()
        self._owned: dict[int, Lease] = {}
        self.stats = LeaseStats()
        table = sql.Identifier(schema, TABLE)
        runners = sql.Identifier(schema, RUNNERS_TABLE)

        def statement(text: str) -> sql.Composed:
            return sql.SQL(text).format(table=table, runners=runners)

        self._claim_sql = statement(_CLAIM)
        self._renew_sql = statement(_RENEW)
        self._release_sql = statement(_RELEASE)
        self._create_rows_sql = statement(_CREATE_ROWS)
        self._count_rows_sql = statement(_COUNT_ROWS)
        self._table_sql = statement(_TABLE)
        self._live_sql = statement(_LIVE)
        self._announce_sql = statement(_ANNOUNCE)
        self._leave_sql = statement(_LEAVE)
        self._prune_sql = statement(_PRUNE)
        self._runners_sql = statement(_RUNNERS)
        self._lock_sql = statement("LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE")

    @classmethod
    async def open(
        cls,
        pool: AsyncConnectionPool[Connection],
        *,
        schema: str = DEFAULT_SCHEMA,
        segments: int = DEFAULT_SEGMENTS,
        lease: float = DEFAULT_LEASE,
        heartbeat: float | None = None,
        on_lost: LostCallback | None = None,
        incarnation: str | None = None,
    ) -> SegmentLeases:
        """Create or migrate the lease table in ``schema`` and its rows ``0 … segments - 1``.

        Idempotent, and safe for many runners starting at once.

        :param pool: an open pool of autocommit connections (its owner closes it).
        :param segments: 1 … 4096; every runner of a cluster must use the same.
        :param lease: seconds a lease lasts unless renewed (more than 0, at most an hour).
        :param heartbeat: seconds between renewals; default a third of the lease.
        :param incarnation: the owner id; default a fresh :func:`new_incarnation`.
        :raises InvalidArgument: a value outside those ranges, or a pool
            whose connections are not in autocommit mode.
        :raises StoreError: the database failed or refused, the schema was
            written by a newer tailrunner, or the table holds another
            number of segments than ``segments``.
        """
        leases = cls(
            pool,
            schema=schema,
            segments=segments,
            lease=lease,
            heartbeat=heartbeat,
            on_lost=on_lost,
            incarnation=incarnation,
        )
        await leases._setup()
        return leases

    @property
    def incarnation(self) -> str:
        """This runner's owner id in the lease table."""
        return self._owner

    @property
    def segments(self) -> int:
        """How many segments the cluster has."""
        return self._segments

    @property
    def schema(self) -> str:
        return self._schema

    @property
    def lease(self) -> float:
        """Seconds a lease lasts unless renewed."""
        return self._lease

    @property
    def heartbeat(self) -> float:
        """Seconds between renewals (also the margin left to stop a lost segment's tasks)."""
        return self._heartbeat

    def owned(self) -> dict[int, Lease]:
        """The leases this runner holds, by segment (a copy)."""
        return dict(self._owned)

    def holds(self, segment: int) -> bool:
        """Whether ``segment`` is held and within its local deadline (check before each run).

        Leases past their deadline are reported lost first, as by
        :meth:`expire_overdue`: a runner that woke up from a pause drops
        them before it starts anything.
        """
        self.expire_overdue()
        return segment in self._owned

    def fence(self, segment: int) -> Fence | None:
        """The fence for a write in ``segment``'s task; ``None`` if not :meth:`holds`."""
        if not self.holds(segment):
            return None
        lease = self._owned[segment]
        return Fence(
            schema=self._schema,
            segment=segment,
            owner=self._owner,
            epoch=lease.epoch,
            lease=self._lease,
        )

    async def claim(self, max_count: int) -> list[Lease]:
        """Claim up to ``max_count`` free or expired segments; the leases won.

        Each claim bumps the segment's epoch. Segments this runner already
        holds are never claimed again (an expired one is first reported
        lost by :meth:`renew`). Not retried: a claim cut off by a lost
        connection may have been made; those segments then expire unused.

        :raises InvalidArgument: a negative ``max_count``.
        :raises StoreError: the database failed.
        """
        if isinstance(max_count, bool) or not isinstance(max_count, int) or max_count < 0:
            raise InvalidArgument("max_count", f"{max_count!r}: expected an integer 0 or more")
        if max_count == 0:
            return []
        params = {
            "segments": self._segments,
            "held": sorted(self._owned),
            "count": max_count,
            "owner": self._owner,
            "lease": self._lease,
        }
        sent = anyio.current_time()
        rows = await self._fetch("claim", self._claim_sql, params, retry=False)
        won: list[Lease] = []
        for segment, epoch, acquired_at, expires_at, previous in rows:
            lease = self._lease_from(segment, epoch, acquired_at, expires_at, sent)
            self._owned[segment] = lease
            won.append(lease)
            if previous is not None and previous != self._owner:
                self.stats.rescued += 1
                log.info("rescued", segment=segment, epoch=epoch, previous_owner=previous)
        won.sort(key=lambda lease: lease.segment)
        self.stats.claimed += len(won)
        if won:
            log.info("claimed", segments=[lease.segment for lease in won], owner=self._owner)
        return won

    async def renew(self) -> list[Lease]:
        """Extend the leases still held with the same epoch; the leases kept.

        The others are lost: removed from :meth:`owned` and reported to
        ``on_lost``. Then any lease past its local deadline is reported lost
        as well (see the module's docstring).

        :raises StoreError: the database failed; nothing was renewed (the
            heartbeat goes on and loses leases by their deadlines).
        """
        held = dict(self._owned)
        if not held:
            return []
        params = {
            "segments": list(held),
            "epochs": [lease.epoch for lease in held.values()],
            "owner": self._owner,
            "lease": self._lease,
        }
        sent = anyio.current_time()
        try:
            rows = await self._fetch("renew", self._renew_sql, params, retry=True)
        except StoreError:
            self.stats.heartbeat_failures += 1
            raise
        self.stats.heartbeats += 1
        kept: list[Lease] = []
        stale: list[Lease] = []
        for segment, epoch, acquired_at, expires_at in rows:
            lease = self._lease_from(segment, epoch, acquired_at, expires_at, sent)
            if self._owned.get(segment) == held[segment]:
                self._owned[segment] = lease
                kept.append(lease)
            else:
                # Renewed in the table but let go here meanwhile (its deadline
                # passed while the renewal was on its way, or it was released):
                # hand it back at once, or nobody, this runner included, could
                # claim it for a whole lease.
                stale.append(lease)
        renewed = {lease.segment for lease in kept}
        if stale:
            try:
                await self._fetch(
                    "release",
                    self._release_sql,
                    {
                        "segments": [lease.segment for lease in stale],
                        "epochs": [lease.epoch for lease in stale],
                        "owner": self._owner,
                    },
                    retry=True,
                )
            except StoreError as exc:
                # They expire unused: late, but safe.
                log.warning("release failed", segments=[s.segment for s in stale], error=str(exc))
        lost = [
            lease
            for segment, lease in held.items()
            if segment not in renewed and self._owned.get(segment) == lease
        ]
        self._lose(lost, "not renewed")
        self.expire_overdue()
        kept = [lease for lease in kept if lease.segment in self._owned]
        kept.sort(key=lambda lease: lease.segment)
        return kept

    async def release(self, segments: Iterable[int]) -> list[int]:
        """Hand back ``segments`` (between runs: their tasks stopped, tails flushed).

        They become free for any claimer; their epochs stay, so the next
        claim bumps them. Segments not held are skipped.

        :returns: the segments released, in order.
        :raises StoreError: the database failed; the segments stay held
            here (renewed or lost as before), and expire if not renewed.
        """
        held = [self._owned[s] for s in sorted(set(segments)) if s in self._owned]
        if not held:
            return []
        params = {
            "segments": [lease.segment for lease in held],
            "epochs": [lease.epoch for lease in held],
            "owner": self._owner,
        }
        rows = await self._fetch("release", self._release_sql, params, retry=True)
        # Not released (lost meanwhile) or released: not ours any more either way.
        for lease in held:
            if self._owned.get(lease.segment) == lease:
                del self._owned[lease.segment]
        released = sorted(row[0] for row in rows)
        self.stats.released += len(released)
        log.info("released", segments=released, owner=self._owner)
        return released

    def drop(self, segments: Iterable[int], why: str = "fenced write") -> list[Lease]:
        """Stop holding ``segments`` here without touching the table (a fenced write failed).

        Reports them to ``on_lost``; their leases expire in the table.
        """
        lost = [self._owned[s] for s in sorted(set(segments)) if s in self._owned]
        self._lose(lost, why)
        return lost

    def expire_overdue(self) -> list[Lease]:
        """Report lost every lease past its local deadline; those leases."""
        now = anyio.current_time()
        overdue = [lease for lease in self._owned.values() if lease.deadline <= now]
        self._lose(overdue, "deadline passed")
        return overdue

    async def table(self) -> list[SegmentRow]:
        """Every segment's row: owner, epoch, since, expiry (for ``tailrunner status``).

        :raises StoreError: the database failed.
        """
        rows = await self._fetch("table", self._table_sql, {}, retry=True)
        return [
            SegmentRow(
                segment=segment,
                owner=owner,
                epoch=epoch,
                since=since,
                expires_at=expires_at,
                live=bool(live),
            )
            for segment, owner, epoch, since, expires_at, live in rows
        ]

    async def live_runners(self) -> int:
        """The runners alive: distinct owners of unexpired leases, this runner included.

        :raises StoreError: the database failed.
        """
        rows = await self._fetch("live_runners", self._live_sql, {"owner": self._owner}, retry=True)
        return int(rows[0][0]) + 1

    async def announce(self, about: str = "", *, prune: bool = False) -> None:
        """Say that this runner is alive, for one lease (every heartbeat does).

        A runner counts in :meth:`live_runners` while it announces itself,
        even before it holds a segment: that is how a newcomer gets the
        others to give back their extra segments.

        :param prune: also delete the rows of runners gone for an hour
            (crashed ones never :meth:`leave`).
        :raises StoreError: the database failed.
        """
        params = {"owner": self._owner, "lease": self._lease, "about": about}
        await self._execute("announce", self._announce_sql, params)
        if prune:
            await self._execute("prune", self._prune_sql, {"keep": _KEEP_GONE})

    async def leave(self) -> None:
        """Withdraw this runner's presence (a clean stop), and prune long-gone runners.

        :raises StoreError: the database failed.
        """
        await self._execute("leave", self._leave_sql, {"owner": self._owner, "keep": _KEEP_GONE})

    async def runners(self) -> list[RunnerRow]:
        """The runners that announced themselves within the last hour, oldest first.

        :raises StoreError: the database failed.
        """
        rows = await self._fetch("runners", self._runners_sql, {"keep": _KEEP_GONE}, retry=True)
        return [
            RunnerRow(owner=owner, started_at=started, expires_at=expires, about=about, live=live)
            for owner, started, expires, about, live in rows
        ]

    async def share(self, slack: int = DEFAULT_SLACK) -> int:
        """The most segments this runner should hold now: :func:`fair_share` of the live."""
        return fair_share(self._segments, await self.live_runners(), slack)

    async def run_heartbeat(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Renew the leases every heartbeat until cancelled; report the lost ones.

        A renewal that fails (database unreachable) is logged and tried
        again on the next beat; meanwhile leases are lost by their local
        deadlines. A renewal that hangs is cut off after one heartbeat.
        """
        task_status.started()
        while True:
            await anyio.sleep(self.next_beat())
            with anyio.move_on_after(self._heartbeat):
                try:
                    await self.renew()
                except StoreError as exc:
                    log.warning("heartbeat failed", owner=self._owner, error=str(exc))
            self.expire_overdue()

    def next_beat(self) -> float:
        """Seconds to the next renewal: a heartbeat, or sooner when a local deadline comes first."""
        wait = self._heartbeat
        if self._owned:
            first = min(lease.deadline for lease in self._owned.values())
            wait = min(wait, first - anyio.current_time())
        return max(0.0, wait)

    def _lease_from(
        self, segment: int, epoch: int, acquired_at: datetime, expires_at: datetime, sent: float
    ) -> Lease:
        return Lease(
            segment=segment,
            owner=self._owner,
            epoch=epoch,
            acquired_at=acquired_at,
            expires_at=expires_at,
            deadline=sent + self._lease - self._heartbeat,
        )

    def _lose(self, lost: Sequence[Lease], why: str) -> None:
        if not lost:
            return
        for lease in lost:
            del self._owned[lease.segment]
        self.stats.lost += len(lost)
        log.warning(
            "lost",
            segments=[lease.segment for lease in lost],
            owner=self._owner,
            why=why,
        )
        if self.on_lost is not None:
            self.on_lost(list(lost))

    async def _setup(self) -> None:
        name = f"segment leases (schema {self._schema})"

        def refuse(why: str) -> StoreError:
            return StoreError(f"cannot open the {name}: {why}")

        try:
            async with self._connection("open") as conn:
                if not conn.autocommit:
                    raise InvalidArgument(
                        "pool",
                        "its connections must be in autocommit mode: each lease statement stands"
                        " alone",
                    )
                version, migrated = await migrate(
                    PostgresMigration(conn, self._schema, _LOCK_CLASS),
                    DIALECT,
                    VERSION_TABLE,
                    MIGRATIONS,
                    refuse,
                )
                row = await self._count_rows(conn)
                if row == (0, -1):
                    # The first runner: the table lock (for this transaction
                    # only) makes runners starting at once create the rows once.
                    async with conn.transaction():
                        await conn.execute(self._lock_sql)
                        await conn.execute(self._create_rows_sql, {"segments": self._segments})
                    row = await self._count_rows(conn)
        except psycopg.Error as exc:
            raise refuse(reason(exc)) from exc
        if migrated:
            log.info("migrated", store=name, version=version)
        count, top = row
        if count != self._segments or top != self._segments - 1:
            raise refuse(
                f"its table holds {count} segments, this runner is set to {self._segments}:"
                " every runner of a cluster must use the same number of segments"
            )

    async def _count_rows(self, conn: Connection) -> tuple[int, int]:
        cursor = await conn.execute(self._count_rows_sql)
        row = await cursor.fetchone()
        return (int(row[0]), int(row[1])) if row is not None else (0, -1)

    async def _execute(self, what: str, query: sql.Composed, params: dict[str, Any]) -> None:
        await self._fetch(what, query, params, retry=True, rows=False)

    async def _fetch(
        self,
        what: str,
        query: sql.Composed,
        params: dict[str, Any],
        *,
        retry: bool,
        rows: bool = True,
    ) -> list[TupleRow]:
        async def run() -> list[TupleRow]:
            async with self._connection(what) as conn:
                cursor = await conn.execute(query, params)
                return await cursor.fetchall() if rows else []

        try:
            try:
                return await run()
            except psycopg.OperationalError as exc:
                # A pooled connection the server dropped fails once; a fresh one works.
                if not retry:
                    raise
                log.warning("retrying", call=what, error=reason(exc))
                # A cut network breaks every pooled connection at once: drop
                # the broken idle ones first, or the retry gets one of them.
                await self._pool.check()
                return await run()
        except psycopg.Error as exc:
            raise StoreError(
                f"segment leases (schema {self._schema}): {what} failed: {reason(exc)}"
            ) from exc

    @asynccontextmanager
    async def _connection(self, what: str) -> AsyncIterator[Connection]:
        conn = await self._pool.getconn()
        try:
            yield conn
        finally:
            # Shielded, or a cancelled caller would leak the connection.
            with anyio.CancelScope(shield=True):
                await self._pool.putconn(conn)
