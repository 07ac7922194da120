"""``Membership``: one runner's part in a cluster: which tasks it may run, and when.

It drives :class:`~tailrunner.scaleout.leases.SegmentLeases` on one beat
(a third of the lease): renew the leases held, announce the runner, then
balance: claim segments up to the runner's :func:`fair_share`, or give back
those beyond it. The engine asks :meth:`Membership.allows` before it starts
a run, and every tail write learns its fence from :meth:`Membership.fence`
(:class:`~tailrunner.scaleout.fenced_tails.FencedTailStore`).

The runner plugs in three callbacks, since this layer cannot see the engine:

- ``on_claimed(segments)``: new segments are held; start their tasks from
  the stored tails (discovery);
- ``on_lost(segments)``: segments are lost (not renewed in time, a local
  deadline passed, a fenced write): stop their tasks *now*, writing nothing;
- ``drain(segments)``: segments are to be given back: stop their tasks
  between runs and flush their tails; the leases are released after it.

A segment being given back is *draining*: :meth:`allows` refuses its tasks,
so no new run starts there, while its writes stay fenced by the lease that
is still held until the release.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from uuid import UUID

import anyio
import structlog
from anyio.abc import TaskStatus

from tailrunner.errors import StoreError
from tailrunner.scaleout.balance import DEFAULT_SLACK
from tailrunner.scaleout.leases import Lease, SegmentLeases
from tailrunner.scaleout.segments import segment_of
from tailrunner.sql.fencing import Fence, FencedWrites

log = structlog.get_logger(__name__)

SegmentsCallback = Callable[[frozenset[int]], None]
DrainCallback = Callable[[frozenset[int]], Awaitable[None]]


def _ignore(segments: frozenset[int]) -> None:
    pass


async def _nothing_to_drain(segments: frozenset[int]) -> None:
    pass


class Membership:
    """Which segments this runner holds, and the loop that keeps, claims and gives them back.

    :param leases: opened; its ``on_lost`` is taken over by this object.
    :param slack: segments a runner may hold beyond its even share.
    :param about: what :meth:`SegmentLeases.announce` says about this runner
        (default: host, pid).
    """

    def __init__(
        self,
        leases: SegmentLeases,
        *,
        slack: int = DEFAULT_SLACK,
        about: str | None = None,
    ) -> None:
        self.leases = leases
        self._slack = slack
        #: What the runner says about itself on every beat (``tailrunner status``).
        self.about = about if about is not None else f"{socket.gethostname()} pid {os.getpid()}"
        self._draining: set[int] = set()
        self.fenced_writes = FencedWrites()
        self.on_claimed: SegmentsCallback = _ignore
        self.on_lost: SegmentsCallback = _ignore
        self.drain: DrainCallback = _nothing_to_drain
        leases.on_lost = self._lost
        #: Set once the first beat has claimed what it could.
        self.joined = anyio.Event()

    @property
    def incarnation(self) -> str:
        return self.leases.incarnation

    # -- what the engine and the tail store ask ---------------------------------

    def segment(self, activity: str, aggregate_id: UUID) -> int:
        """The segment of task (``activity``, ``aggregate_id``)."""
        return segment_of(activity, aggregate_id, self.leases.segments)

    def allows(self, activity: str, aggregate_id: UUID) -> bool:
        """Whether this runner may start a run of the task now.

        Its segment must be held, within its local deadline, and not draining.
        """
        segment = self.segment(activity, aggregate_id)
        return segment not in self._draining and self.leases.holds(segment)

    def fence(self, activity: str, aggregate_id: UUID) -> Fence | None:
        """The fence for a write of the task; ``None`` when its segment is not held."""
        return self.leases.fence(self.segment(activity, aggregate_id))

    def lease(self, activity: str, aggregate_id: UUID) -> Lease | None:
        """The lease the task's segment is held under now; ``None`` when not held."""
        segment = self.segment(activity, aggregate_id)
        if not self.leases.holds(segment):
            return None
        return self.leases.owned().get(segment)

    def snapshot(self) -> dict[int, int]:
        """The segments held now, with their epochs (see :meth:`still_held`)."""
        self.leases.expire_overdue()
        return {segment: lease.epoch for segment, lease in self.leases.owned().items()}

    def still_held(self, snapshot: dict[int, int], activity: str, aggregate_id: UUID) -> bool:
        """Whether the task's segment was held at ``snapshot`` and still is, under the same epoch.

        Discovery takes a snapshot *before* it reads the stored tails, so a
        task it starts was claimed before its tail was read: the tail is
        the one the previous owner left.
        """
        segment = self.segment(activity, aggregate_id)
        epoch = snapshot.get(segment)
        if epoch is None or segment in self._draining or not self.leases.holds(segment):
            return False
        held = self.leases.owned().get(segment)
        return held is not None and held.epoch == epoch

    def refused(self, fence: Fence) -> None:
        """A write fenced with ``fence`` found the lease gone: count it, stop the segment."""
        self.fenced_writes.record(fence)
        self.leases.drop([fence.segment], "fenced write")

    # -- the loop -------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Renew, announce and balance on every beat until cancelled.

        Starts once the first beat has claimed its share (or failed to
        reach the database, which the next beats retry).
        """
        renewed = await self._beat(first=True)
        self.joined.set()
        task_status.started()
        while True:
            wait = self.leases.next_beat()
            if not renewed:
                # One failed beat must not cost the leases: the local
                # deadline is two beats after the last renewal.
                wait = min(wait, self.leases.heartbeat / 4)
            await anyio.sleep(wait)
            renewed = await self._beat(first=False)

    async def _beat(self, *, first: bool) -> bool:
        """Renew, announce, balance; whether the renewal reached the database."""
        leases = self.leases
        beat = leases.heartbeat
        # Each step is bounded by one beat: a hung database must not keep
        # the loop from losing leases by their local deadlines.
        renewed = False
        with anyio.move_on_after(beat):
            try:
                if not first:
                    await leases.renew()
                await leases.announce(self.about)
                renewed = True
            except StoreError as exc:
                log.warning("heartbeat failed", owner=self.incarnation, error=str(exc))
        leases.expire_overdue()
        if not renewed:
            return False
        with anyio.move_on_after(beat):
            try:
                await self._balance()
            except StoreError as exc:
                log.warning("balance failed", owner=self.incarnation, error=str(exc))
        return True

    async def _balance(self) -> None:
        leases = self.leases
        share = await leases.share(self._slack)
        held = sorted(s for s in leases.owned() if s not in self._draining)
        if len(held) < share:
            won = await leases.claim(share - len(held))
            if won:
                self.on_claimed(frozenset(lease.segment for lease in won))
        elif len(held) > share:
            # The highest first: a newcomer then takes a contiguous block.
            await self.give_back(held[share:])

    async def give_back(self, segments: Iterable[int]) -> list[int]:
        """Stop the segments' tasks between runs, then release their leases; those released.

        Shielded: once started, a hand-over finishes (or fails and lets the
        leases expire), whatever cancels the caller.
        """
        chosen = frozenset(s for s in segments if s in self.leases.owned())
        if not chosen:
            return []
        self._draining |= chosen
        try:
            with anyio.CancelScope(shield=True):
                await self.drain(chosen)
                try:
                    released = await self.leases.release(chosen)
                except StoreError as exc:
                    # Not released: stop holding them here; they expire.
                    log.warning("release failed", segments=sorted(chosen), error=str(exc))
                    self.leases.drop(chosen, "release failed")
                    return []
                return released
            return []  # not reached: the scope is shielded
        finally:
            self._draining -= chosen

    async def leave(self) -> None:
        """A clean stop: give every segment back and withdraw the runner's presence."""
        with anyio.CancelScope(shield=True):
            await self.give_back(list(self.leases.owned()))
            try:
                await self.leases.leave()
            except StoreError as exc:
                log.warning("leave failed", owner=self.incarnation, error=str(exc))

    def _lost(self, lost: Sequence[Lease]) -> None:
        segments = frozenset(lease.segment for lease in lost)
        self._draining -= segments
        self.on_lost(segments)
