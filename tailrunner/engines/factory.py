"""Build an engine by name from its options (what the config's ``[engine]`` says)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from tailrunner.activities.decorator import Activity
from tailrunner.engines.base import Engine
from tailrunner.engines.cron import CronEngine
from tailrunner.engines.eager import EagerEngine
from tailrunner.engines.lazy import LazyEngine
from tailrunner.engines.options import EngineOptions
from tailrunner.engines.ownership import TaskOwnership
from tailrunner.journal.api import JournalApi
from tailrunner.model import AggregateRef
from tailrunner.tails.store import TailStore

__all__ = ["EngineOptions", "build_engine"]


def build_engine(
    options: EngineOptions,
    *,
    journal: JournalApi,
    tails: TailStore,
    activities: Sequence[Activity],
    on_unknown: Callable[[AggregateRef], Awaitable[None]] | None = None,
    on_resync: Callable[[], None] | None = None,
    ownership: TaskOwnership | None = None,
) -> Engine:
    """The engine ``options.kind`` names, ready to :meth:`~Engine.run`.

    :param on_unknown: lazy only: awaited for a signal about an aggregate
        without tasks.
    :param on_resync: lazy only: called when every aggregate must be re-checked.
    :param ownership: scale-out: which tasks this runner may run now.
    """
    if options.kind == "lazy":
        return LazyEngine(
            options,
            journal=journal,
            tails=tails,
            activities=activities,
            on_unknown=on_unknown,
            on_resync=on_resync,
            ownership=ownership,
        )
    engine = EagerEngine if options.kind == "eager" else CronEngine
    return engine(options, journal=journal, tails=tails, activities=activities, ownership=ownership)
