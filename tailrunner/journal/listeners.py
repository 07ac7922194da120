"""``Listeners``: the append listeners of one store, called after each commit."""

from __future__ import annotations

from collections.abc import Callable

import structlog
from ulid import ULID

from tailrunner.journal.store import (
    AppendListener,
    FreshEvents,
    FreshEventsListener,
    ResyncListener,
    wants_fresh_events,
)
from tailrunner.model import AggregateRef

log = structlog.get_logger(__name__)


class Listeners:
    """Holds :data:`~tailrunner.journal.store.AppendListener` callbacks for a store."""

    __slots__ = ("_fresh_wanted", "_listeners", "_resyncs")

    def __init__(self) -> None:
        # Each listener as a 3-argument call, in the order they were added.
        self._listeners: list[FreshEventsListener] = []
        self._resyncs: list[ResyncListener] = []
        self._fresh_wanted = False

    @property
    def wants_fresh_events(self) -> bool:
        """A listener takes the appended events (a store that must make them may skip it if not)."""
        return self._fresh_wanted

    def add(self, listener: AppendListener, on_resync: ResyncListener | None = None) -> None:
        """Call ``listener`` after every committed append from now on.

        A listener marked with :func:`~tailrunner.journal.store.takes_fresh_events`
        gets the events too. ``on_resync`` is called by :meth:`resync`.
        """
        if wants_fresh_events(listener):
            fresh: FreshEventsListener = listener  # type: ignore[assignment]
            self._listeners.append(fresh)
            self._fresh_wanted = True
        else:
            self._listeners.append(_without_events(listener))
        if on_resync is not None:
            self._resyncs.append(on_resync)

    def notify(self, aggregate: AggregateRef, head: ULID, fresh: FreshEvents | None = None) -> None:
        """Tell every listener that ``aggregate`` now ends at ``head``.

        :param fresh: the appended events, when the store has them (its own appends).

        The append has committed by now, so a failing listener must not fail
        it: the failure is logged and the other listeners still run.
        """
        for listener in self._listeners:
            try:
                listener(aggregate, head, fresh)
            except Exception:
                log.exception("listener_failed", aggregate=str(aggregate), head=str(head))

    def resync(self) -> None:
        """Tell every listener that appends may have been missed (a lost notification link).

        Calls the ``on_resync`` of each :meth:`add` that gave one; failures
        are logged, like :meth:`notify`'s.
        """
        for resync in self._resyncs:
            try:
                resync()
            except Exception:
                log.exception("listener_resync_failed")


def _without_events(listener: AppendListener) -> Callable[[AggregateRef, ULID, object], None]:
    def call(aggregate: AggregateRef, head: ULID, _fresh: object) -> None:
        listener(aggregate, head)

    return call
