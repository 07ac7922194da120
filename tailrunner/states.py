"""The vocabulary of tasks and runs, below everything that uses it.

The engines decide states and outcomes, the tail stores keep them, the admin
service shows them: each reads these enums from here, so the stores' records
are typed with them and no layer reaches up into the engines for a word.
"""

from __future__ import annotations

import enum


class TaskState(enum.StrEnum):
    """Spin Cycle's vocabulary where it fits, plus the lazy engine's ``SLEEPING``.

    ``PENDING``: ready to run, waiting for capacity. ``RUNNING``: its stream is
    open. ``SLEEPING``: caught up, waiting for a signal, a tick or the backstop.
    ``RETRY``: waiting for a retry time after an error (backoff).
    ``WAITING``: waiting for the time it asked for (``SilentRetryAfter``); not
    an error. ``COMPLETE``: returned ``Done``, never runs again.
    ``STOPPED``: stopped by an operator. ``SUSPENDED``: reached its attempt
    limit or suspended by an operator; waits for an operator to resume it.
    """

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SLEEPING = "SLEEPING"
    RETRY = "RETRY"
    COMPLETE = "COMPLETE"
    STOPPED = "STOPPED"
    SUSPENDED = "SUSPENDED"
    WAITING = "WAITING"


class WaitReason(enum.StrEnum):
    """Why a task that is not running waits, for the operator's status view."""

    #: Backoff after an error or a silent retry (``RETRY``).
    BACKOFF = "backoff"
    #: The time its ``SilentRetryAfter`` asked for (``WAITING``).
    RETRY_AFTER = "retry_after"
    #: Cron: the next tick (``SLEEPING``).
    CRON_TICK = "cron_tick"
    #: Lazy: the next signal, or the backstop re-check at the latest (``SLEEPING``).
    SIGNAL = "signal"
    #: Eager: re-opening its watch stream after a pause (``SLEEPING``).
    REOPEN = "reopen"
    #: Ready, but every slot is taken (``PENDING``).
    CAPACITY = "capacity"
    #: Set aside until an operator resumes it (``SUSPENDED``).
    SUSPENDED = "suspended"
    #: Stopped by an operator (``STOPPED``).
    STOPPED = "stopped"


class OutcomeKind(enum.StrEnum):
    """How a run ended: what the engine made of what the activity reported."""

    DONE = "done"
    EOF = "eof"
    #: An operator's control cancelled the run.
    STOPPED = "stopped"
    SILENT_RETRY = "silent_retry"
    RETRY_AFTER = "retry_after"
    ERROR = "error"

    @classmethod
    def stored(cls, text: str) -> OutcomeKind:
        """The outcome a run record's column holds (``cancelled``: an older word for stopped)."""
        return cls.STOPPED if text == "cancelled" else cls(text)
