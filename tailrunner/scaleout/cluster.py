"""``join_cluster``: open one runner's membership of a cluster on its PostgreSQL tail store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio

from tailrunner.errors import InvalidArgument
from tailrunner.scaleout.balance import DEFAULT_SLACK
from tailrunner.scaleout.fenced_tails import FencedTailStore
from tailrunner.scaleout.leases import DEFAULT_LEASE, SegmentLeases
from tailrunner.scaleout.membership import Membership
from tailrunner.scaleout.segments import DEFAULT_SEGMENTS
from tailrunner.sql.postgres import open_pool
from tailrunner.stores import redact
from tailrunner.tails.postgres import PostgresTailStore
from tailrunner.tails.store import TailStore


@dataclass(frozen=True, slots=True)
class ClusterMember:
    """What a runner in a cluster runs with: its membership, and the tails to write through."""

    membership: Membership
    tails: FencedTailStore


@asynccontextmanager
async def join_cluster(
    url: str,
    tails: TailStore,
    *,
    segments: int = DEFAULT_SEGMENTS,
    lease: float = DEFAULT_LEASE,
    slack: int = DEFAULT_SLACK,
    about: str | None = None,
    connect_timeout: float = 10.0,
) -> AsyncIterator[ClusterMember]:
    """Open the segment leases beside ``tails`` (the lease table in its schema).

    The leases get a small pool of their own, so that the heartbeat never
    waits behind the tail store's transactions. Closing it closes that
    pool, not ``tails``.

    :param url: the tail store's PostgreSQL URL.
    :param tails: the store opened from ``url``; must be PostgreSQL.
    :raises InvalidArgument: ``tails`` is not a PostgreSQL store.
    :raises StoreError: the database cannot be reached, or its lease table
        holds another number of segments.
    """
    if not isinstance(tails, PostgresTailStore):
        raise InvalidArgument(
            "scaleout.enabled",
            f"needs the tail store on PostgreSQL, not {type(tails).__name__}",
        )
    # Its own small pool: the heartbeat, the balance and the admin's cluster
    # view, never waiting behind the tail store's transactions. No prepared
    # statements: session state breaks behind pgbouncer in transaction mode.
    pool = await open_pool(
        url,
        max_size=4,
        name="tailrunner-leases",
        connect_timeout=connect_timeout,
        what=f"the segment leases on {redact(url)}",
        prepare=False,
    )
    try:
        leases = await SegmentLeases.open(pool, schema=tails.schema, segments=segments, lease=lease)
        membership = Membership(leases, slack=slack, about=about)
        yield ClusterMember(membership=membership, tails=FencedTailStore(tails, membership))
    finally:
        with anyio.CancelScope(shield=True):
            await pool.close()
