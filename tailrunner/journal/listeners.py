"""``Listeners``: the append listeners of one store, called after each commit."""

from __future__ import annotations

import structlog
from ulid import ULID

from tailrunner.journal.store import AppendListener, ResyncListener
from tailrunner.model import AggregateRef

log = structlog.get_logger(__name__)


class Listeners:
    """Holds :data:`~tailrunner.journal.store.AppendListener` callbacks for a store."""

    __slots__ = ("_listeners", "_resyncs")

    def __init__(self) -> None:
        self._listeners: list[AppendListener] = []
        self._resyncs: list[ResyncListener] = []

    def add(self, listener: AppendListener, on_resync: ResyncListener | None = None) -> None:
        """Call ``listener`` after every committed append from now on.

        ``on_resync`` is called by :meth:`resync`.
        """
        self._listeners.append(listener)
        if on_resync is not None:
            self._resyncs.append(on_resync)

    def notify(self, aggregate: AggregateRef, head: ULID) -> None:
        """Tell every listener that ``aggregate`` now ends at ``head``.

        The append has committed by now, so a failing listener must not fail
        it: the failure is logged and the other listeners still run.
        """
        for listener in self._listeners:
            try:
                listener(aggregate, head)
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
