"""``Listeners``: the append listeners of one store, called after each commit."""

from __future__ import annotations

import structlog
from ulid import ULID

from tailrunner.journal.store import AppendListener
from tailrunner.model import AggregateRef

log = structlog.get_logger(__name__)


class Listeners:
    """Holds :data:`~tailrunner.journal.store.AppendListener` callbacks for a store."""

    __slots__ = ("_listeners",)

    def __init__(self) -> None:
        self._listeners: list[AppendListener] = []

    def add(self, listener: AppendListener) -> None:
        """Call ``listener`` after every committed append from now on."""
        self._listeners.append(listener)

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

        :data:`~tailrunner.journal.store.AppendListener` has no such call, so
        a listener that is a bound method of an object with a ``resync()``
        method (:meth:`tailrunner.journal.hub.Hub.resync`) gets that called;
        plain functions are skipped. Failures are logged, like :meth:`notify`'s.
        """
        for listener in self._listeners:
            resync = getattr(getattr(listener, "__self__", None), "resync", None)
            if not callable(resync):
                continue
            try:
                resync()
            except Exception:
                log.exception("listener_resync_failed")
