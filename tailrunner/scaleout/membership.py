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
#: ``await drain(segments)`` stops the segments' tasks; the segments whose
#: runs did not end (an activity that ignores cancellation): not released.
DrainCallback = Callable[[frozenset[int]], Awaitable[frozenset[int]]]

#: How many beats between prunes of long-gone runners' presence rows.
_PRUNE_EVERY = 60


def _ignore(segments: frozenset[int]) -> None:
    pass


async def _nothing_to_drain(segments: frozenset[int]) -> frozenset[int]:
    return frozenset()


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
        """A write fenced with ``fence`` found the lease gone: count it, stop the segment.

        Only if the segment is still held under that epoch: a late refusal
        of a write from an earlier lease must not drop the one held now.
        """
        self.fenced_writes.record(fence)
        held = self.leases.owned().get(fence.segment)
        if held is not None and held.epoch == fence.epoch:
            self.leases.drop([fence.segment], "fenced write")

    # -- the loop -------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Keep the leases alive and the share balanced until cancelled.

        Two loops: the heartbeat (renew, announce, lose what is overdue)
        never waits behind the balance, whose hand-overs wait for runs to
        end. Starts once the first claim is made (or failed to reach the
        database, which the next beats retry).
        """
        async with anyio.create_task_group() as tg:
            await self._announce()
            await self._balance_once()
            self.joined.set()
            tg.start_soon(self._heartbeat_loop)
            tg.start_soon(self._balance_loop)
            task_status.started()

    async def _heartbeat_loop(self) -> None:
        leases = self.leases
        renewed, beats = True, 0
        while True:
            wait = leases.next_beat()
            if not renewed:
                # One failed beat must not cost the leases: the local
                # deadline is two beats after the last renewal.
                wait = min(wait, leases.heartbeat / 4)
            await anyio.sleep(wait)
            # A runner that woke from a pause stops what it lost first.
            leases.expire_overdue()
            renewed = False
            # Bounded by one beat: a hung database must not keep the loop
            # from losing leases by their local deadlines.
            with anyio.move_on_after(leases.heartbeat):
                try:
                    await leases.renew()
                    renewed = True
                    await self._announce(prune=beats % _PRUNE_EVERY == 0)
                except StoreError as exc:
                    log.warning("heartbeat failed", owner=self.incarnation, error=str(exc))
            leases.expire_overdue()
            beats += 1

    async def _announce(self, *, prune: bool = False) -> None:
        try:
            await self.leases.announce(self.about, prune=prune)
        except StoreError as exc:
            log.warning("announce failed", owner=self.incarnation, error=str(exc))

    async def _balance_loop(self) -> None:
        while True:
            await anyio.sleep(self.leases.heartbeat)
            await self._balance_once()

    async def _balance_once(self) -> None:
        extra: list[int] = []
        with anyio.move_on_after(self.leases.heartbeat):
            try:
                share = await self.leases.share(self._slack)
            except StoreError as exc:
                log.warning("balance failed", owner=self.incarnation, error=str(exc))
                return
            held = sorted(s for s in self.leases.owned() if s not in self._draining)
            if len(held) < share:
                try:
                    won = await self.leases.claim(share - len(held))
                except StoreError as exc:
                    log.warning("claim failed", owner=self.incarnation, error=str(exc))
                    return
                if won:
                    self.on_claimed(frozenset(lease.segment for lease in won))
                return
            # The highest first: a newcomer then takes a contiguous block.
            extra = held[share:]
        if extra:
            # Not bounded by the beat: it waits for runs to end (between runs).
            await self.give_back(extra)

    async def give_back(self, segments: Iterable[int]) -> list[int]:
        """Stop the segments' tasks between runs, then release their leases; those released.

        A segment whose run did not end (an activity that ignores
        cancellation) is not released but dropped: its lease expires in
        the table, so that nobody runs its task beside that run sooner.
        The release is shielded: once the tasks are stopped, it is sent.
        """
        chosen = frozenset(s for s in segments if s in self.leases.owned())
        if not chosen:
            return []
        self._draining |= chosen
        try:
            stuck = await self.drain(chosen)
            released: list[int] = []
            with anyio.CancelScope(shield=True):
                if stuck:
                    self.leases.drop(stuck, "a run did not end: left to expire")
                free = chosen - stuck
                try:
                    released = await self.leases.release(free)
                except StoreError as exc:
                    # Not released: stop holding them here; they expire.
                    log.warning("release failed", segments=sorted(free), error=str(exc))
                    self.leases.drop(free, "release failed")
            return released
        finally:
            self._draining -= chosen

    async def leave(self) -> None:
        """A clean stop: give every segment back and withdraw the runner's presence.

        The heartbeat goes on meanwhile, so the leases still held stay
        valid while their tasks are stopped. Bound it with a deadline.
        """
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._heartbeat_loop)
            await self.give_back(list(self.leases.owned()))
            tg.cancel_scope.cancel()
        with anyio.CancelScope(shield=True):
            try:
                await self.leases.leave()
            except StoreError as exc:
                log.warning("leave failed", owner=self.incarnation, error=str(exc))

    def _lost(self, lost: Sequence[Lease]) -> None:
        segments = frozenset(lease.segment for lease in lost)
        self._draining -= segments
        self.on_lost(segments)
