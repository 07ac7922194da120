"""The runner: discovers aggregates and keeps one task per (activity, aggregate) in an engine.

Aggregates are found by ``ListAggregates`` at start, again every discovery
interval and whenever the lazy engine's signal stream says ``resync``, and
(lazy) by signals for aggregates not seen before. Each new task resumes from
its stored record (:meth:`~tailrunner.engines.base.Engine.restore`):
its tail, its state if complete, stopped or suspended, and its backoff.
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
from tailrunner.errors import JournalError
from tailrunner.journal.api import JournalApi
from tailrunner.model import AggregateRef
from tailrunner.reconnect import ConnectionWatch
from tailrunner.tails.store import TailRecord, TailStore

log = structlog.get_logger(__name__)


class Runner:
    """Runs ``activities`` under the engine ``options`` names until cancelled.

    The aggregates are listed again every ``options.discovery_interval`` seconds.
    """

    def __init__(
        self,
        *,
        journal: JournalApi,
        tails: TailStore,
        activities: Sequence[Activity],
        options: EngineOptions,
    ) -> None:
        if not activities:
            raise ValueError("the runner needs at least one activity")
        self._journal = journal
        self._tails = tails
        self._activities = list(activities)
        self._discovery_interval = options.discovery_interval
        self._reconnect = options.reconnect
        self._rediscover = anyio.Event()
        self.engine: Engine = build_engine(
            options,
            journal=journal,
            tails=tails,
            activities=self._activities,
            on_unknown=self._discover_one,
            on_resync=self._request_discovery,
        )
        #: Set once the first discovery pass has started every known task.
        self.discovered = anyio.Event()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Discover aggregates and run the engine until cancelled."""
        log.info(
            "runner starting",
            engine=self.engine.name,
            activities=[a.name for a in self._activities],
        )
        async with anyio.create_task_group() as tg:
            await tg.start(self.engine.run)
            tg.start_soon(self._discovery_loop)
            task_status.started()

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
            except JournalError as exc:
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
                        if act.name not in stored:
                            stored[act.name] = dict(await self._tails.load(act.name))
                        self._start(act, info.ref, stored[act.name].get(info.id))
                        started += 1
                if not token:
                    break
        if started:
            log.info("discovered", tasks=started)
        self.discovered.set()
        return started

    async def _discover_one(self, aggregate: AggregateRef) -> None:
        for act in self._activities:
            if (
                aggregate.type in act.aggregate_types
                and self.engine.find(act.name, aggregate.id) is None
            ):
                self._start(act, aggregate, await self._tails.get(act.name, aggregate.id))

    def _start(self, act: Activity, aggregate: AggregateRef, record: TailRecord | None) -> None:
        if record is None:
            self.engine.start_activity(aggregate, act, None)
        else:
            self.engine.restore(aggregate, act, record)
