"""The runner: discovers aggregates and keeps one task per (activity, aggregate) in an engine.

Aggregates are found by ``ListAggregates`` at start, again every discovery
interval and whenever the lazy engine's signal stream says ``resync``, and
(lazy) by signals for aggregates not seen before. Each new task resumes from
its stored record (:meth:`~tailrunner.engines.base.Engine.restore`):
its tail, its state if complete, stopped or suspended, and its backoff.

In a cluster (``membership``) the runner runs only the tasks of the segments
it holds: a claim starts discovery for them, a lost segment's tasks leave
the engine at once, and a segment given back is drained between runs first.
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

import anyio
import structlog
from anyio.abc import TaskStatus

from tailrunner.activities.decorator import Activity
from tailrunner.engines.base import Engine
from tailrunner.engines.factory import EngineOptions, build_engine
from tailrunner.engines.task import Task
from tailrunner.errors import AccessDenied, JournalError
from tailrunner.journal.api import JournalApi
from tailrunner.model import AggregateRef
from tailrunner.reconnect import ConnectionWatch
from tailrunner.scaleout.membership import Membership
from tailrunner.tails.store import TailRecord, TailStore
from tailrunner.watchdog import LoopWatchdog

log = structlog.get_logger(__name__)


class Runner:
    """Runs ``activities`` under the engine ``options`` names until cancelled.

    The aggregates are listed again every ``options.discovery_interval`` seconds.

    :param membership: scale-out: this runner's part of a cluster (then
        ``tails`` must write through
        :class:`~tailrunner.scaleout.fenced_tails.FencedTailStore`).
    """

    def __init__(
        self,
        *,
        journal: JournalApi,
        tails: TailStore,
        activities: Sequence[Activity],
        options: EngineOptions,
        membership: Membership | None = None,
    ) -> None:
        if not activities:
            raise ValueError("the runner needs at least one activity")
        self._journal = journal
        self._tails = tails
        self._activities = list(activities)
        self._discovery_interval = options.discovery_interval
        self._reconnect = options.reconnect
        self._rediscover = anyio.Event()
        self._membership = membership
        self._shutdown_grace = options.shutdown_grace
        #: Warns when an activity blocks the event loop (``None``: turned off).
        self.watchdog = (
            LoopWatchdog(options.loop_lag_warning) if options.loop_lag_warning > 0 else None
        )
        self.engine: Engine = build_engine(
            options,
            journal=journal,
            tails=tails,
            activities=self._activities,
            on_unknown=self._discover_one,
            on_resync=self._request_discovery,
            ownership=membership,
        )
        if membership is not None:
            membership.on_claimed = self._segments_claimed
            membership.on_lost = self._segments_lost
            membership.drain = self._drain
        #: Set once the first discovery pass has started every known task.
        self.discovered = anyio.Event()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Discover aggregates and run the engine until cancelled."""
        log.info(
            "runner starting",
            engine=self.engine.name,
            activities=[a.name for a in self._activities],
        )
        membership = self._membership
        async with anyio.create_task_group() as tg:
            if self.watchdog is not None:
                await tg.start(self.watchdog.run)
            if membership is not None:
                # The first claim before the first discovery: it finds them.
                await tg.start(membership.run)
            await tg.start(self.engine.run)
            tg.start_soon(self._discovery_loop)
            task_status.started()
            if membership is not None:
                try:
                    await anyio.sleep_forever()
                finally:
                    # Hand the segments back (tails flushed) so that the
                    # others need not wait for the leases to expire.
                    with anyio.CancelScope(shield=True):
                        with anyio.move_on_after(
                            2 * self._shutdown_grace + membership.leases.heartbeat
                        ):
                            await membership.leave()

    def _segments_claimed(self, segments: frozenset[int]) -> None:
        self._request_discovery()

    def _in_segments(self, segments: frozenset[int]) -> list[Task]:
        membership = self._membership
        assert membership is not None
        return [
            task
            for task in self.engine.tasks()
            if membership.segment(task.activity.name, task.aggregate.id) in segments
        ]

    def _segments_lost(self, segments: frozenset[int]) -> None:
        self.engine.retire(self._in_segments(segments))

    async def _drain(self, segments: frozenset[int]) -> frozenset[int]:
        membership = self._membership
        assert membership is not None
        # Runs get half a beat to end by themselves (a lazy run is short).
        stuck = await self.engine.evict(
            self._in_segments(segments), wait=membership.leases.heartbeat / 2
        )
        return frozenset(membership.segment(t.activity.name, t.aggregate.id) for t in stuck)

    def _may_start(self, snapshot: dict[int, int], act: Activity, aggregate_id: UUID) -> bool:
        """Whether this runner runs the task: always alone; in a cluster, if its segment's held.

        ``snapshot`` was taken before the task's stored record was read, so
        the record is the one the segment's previous owner left.
        """
        membership = self._membership
        return membership is None or membership.still_held(snapshot, act.name, aggregate_id)

    def _snapshot(self) -> dict[int, int]:
        return {} if self._membership is None else self._membership.snapshot()

    def _request_discovery(self) -> None:
        self._rediscover.set()

    async def _discovery_loop(self) -> None:
        # A failed discovery is retried on the journal's reconnect backoff
        # (short, bounded), and an outage is logged once, not per attempt.
        policy = self._reconnect
        journal = ConnectionWatch(call="ListAggregates", policy=policy)
        # Anything else (the tail store, say) is one state of its own.
        other = ConnectionWatch(
            call="discover",
            policy=policy,
            events=("discovery failed", "discovery still failing", "discovery works again"),
        )
        while True:
            self._rediscover = anyio.Event()
            try:
                await self.discover()
                journal.reachable()
                other.reachable()
                delay = self._discovery_interval
            except (JournalError, AccessDenied) as exc:  # a revoked token too
                delay = journal.unreachable(exc)
            except Exception as exc:
                delay = other.unreachable(exc)
            with anyio.move_on_after(delay):
                await self._rediscover.wait()

    async def discover(self) -> int:
        """List every aggregate of the activities' types and start missing tasks.

        :returns: how many tasks it started.
        """
        started = 0
        snapshot = self._snapshot()
        stored: dict[str, dict[UUID, TailRecord]] = {}
        for aggregate_type in sorted({t for a in self._activities for t in a.aggregate_types}):
            following = [a for a in self._activities if aggregate_type in a.aggregate_types]
            token = ""
            while True:
                page, token = await self._journal.list_aggregates(
                    aggregate_type, page_size=1000, page_token=token
                )
                for info in page:
                    for act in following:
                        if self.engine.find(act.name, info.id) is not None:
                            continue
                        if not self._may_start(snapshot, act, info.id):
                            continue
                        if act.name not in stored:
                            stored[act.name] = dict(await self._tails.load(act.name))
                            # Lost during the load? Then its tasks were retired
                            # already, and this one must not start after them.
                            if self.engine.find(act.name, info.id) is not None or not (
                                self._may_start(snapshot, act, info.id)
                            ):
                                continue
                        self._start(act, info.ref, stored[act.name].get(info.id))
                        started += 1
                if not token:
                    break
        if started:
            log.info("discovered", tasks=started)
        self.discovered.set()
        return started

    async def _discover_one(self, aggregate: AggregateRef) -> None:
        snapshot = self._snapshot()
        for act in self._activities:
            if (
                aggregate.type in act.aggregate_types
                and self.engine.find(act.name, aggregate.id) is None
                and self._may_start(snapshot, act, aggregate.id)
            ):
                record = await self._tails.get(act.name, aggregate.id)
                # Not started meanwhile (another signal), nor lost.
                if self.engine.find(act.name, aggregate.id) is None and self._may_start(
                    snapshot, act, aggregate.id
                ):
                    self._start(act, aggregate, record)

    def _start(self, act: Activity, aggregate: AggregateRef, record: TailRecord | None) -> None:
        if record is None:
            self.engine.start_activity(aggregate, act, None)
        else:
            self.engine.restore(aggregate, act, record)
