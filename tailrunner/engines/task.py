"""A task: one activity following one aggregate, and the states it moves through."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING
from uuid import UUID

from ulid import ULID

from tailrunner.model import AggregateRef
from tailrunner.states import TaskState, WaitReason

if TYPE_CHECKING:
    import anyio

    from tailrunner.activities.decorator import Activity
    from tailrunner.engines.base import Control


#: States a task never leaves by itself.
FINAL_STATES = frozenset({TaskState.COMPLETE, TaskState.STOPPED, TaskState.SUSPENDED})
#: States that wait for a time: the stored record says when (``next_run_at``).
TIMED_STATES = frozenset({TaskState.RETRY, TaskState.WAITING})


class Task:
    """The engine's record of one (activity, aggregate).

    A sleeping task is just this record: no coroutine, no stream. It is kept
    small because the lazy engine holds very many of them: ``__slots__``; the
    tail kept as its 16 bytes (a :class:`ULID` object with its ``__dict__``
    weighs about 130 bytes; a bytes object 49); the aggregate kept as its type,
    shared by every task of that type instead of one string per task, and its
    id's integer (an :class:`AggregateRef` and its :class:`UUID` weigh 104
    bytes besides); :attr:`aggregate` builds them when asked.
    """

    __slots__ = (
        "_tail",
        "_type",
        "activity",
        "aggregate_key",
        "controls",
        "due",
        "errors",
        "failures",
        "generation",
        "last_error",
        "recheck_at",
        "retired",
        "runs",
        "scope",
        "signalled",
        "state",
    )

    def __init__(self, activity: Activity, aggregate: AggregateRef, tail: ULID | None) -> None:
        self.activity = activity
        self._type = sys.intern(aggregate.type)  # else one string per task (from the wire)
        #: The aggregate's id as its integer: the engine's index of tasks is keyed by it.
        self.aggregate_key: int = aggregate.id.int
        self._tail = None if tail is None else tail.bytes
        self.state = TaskState.PENDING
        #: Consecutive runs since the last progress that ended in neither EOF
        #: nor Done: the backoff exponent.
        self.failures = 0
        #: Consecutive errors at the current tail: counted against max_attempts.
        self.errors = 0
        #: A wake-up came while the task was busy: run again as soon as it settles.
        self.signalled = False
        #: Bumped whenever the task's schedule changes, so stale timers and
        #: stale ready-queue entries are ignored.
        self.generation = 0
        #: The loop time (:func:`anyio.current_time`) its timer fires, if it waits for one.
        self.due: float | None = None
        #: Lazy engine: when a sleeping task is re-checked without a signal.
        self.recheck_at = 0.0
        self.runs = 0
        self.last_error: str | None = None
        #: The cancel scope of the current run, so that an operator can stop it.
        self.scope: anyio.CancelScope | None = None
        #: ``None`` while the task is idle. While it is busy (a run, or the
        #: save of a control) a list: the operators' controls that arrived
        #: meanwhile, applied in order when it settles.
        self.controls: list[Control] | None = None
        #: Scale-out: the task's segment went to another runner; this record
        #: left the engine and must never run or write again.
        self.retired = False

    @property
    def aggregate(self) -> AggregateRef:
        """Which aggregate the task follows (a new, equal object each time)."""
        return AggregateRef(type=self._type, id=UUID(int=self.aggregate_key))

    @property
    def tail(self) -> ULID | None:
        """The last event the activity has handled (``None``: none yet)."""
        raw = self._tail
        return None if raw is None else ULID.from_bytes(raw)

    @tail.setter
    def tail(self, tail: ULID | None) -> None:
        self._tail = None if tail is None else tail.bytes

    @property
    def tail_bytes(self) -> bytes | None:
        """The tail's 16 bytes (``None``: none yet), without building a ULID."""
        return self._tail

    def at(self, head: ULID | None) -> bool:
        """Whether the task's tail is ``head`` (without building a ULID)."""
        return self._tail == (None if head is None else head.bytes)

    @property
    def key(self) -> tuple[str, str]:
        return (self.activity.name, str(UUID(int=self.aggregate_key)))

    def log_fields(self) -> dict[str, object]:
        """What every log line about this task says: activity, aggregate and tail."""
        return {
            "activity": self.activity.name,
            "aggregate_type": self._type,
            "aggregate_id": str(UUID(int=self.aggregate_key)),
            "tail": None if self.tail is None else str(self.tail),
        }

    @property
    def busy(self) -> bool:
        """A run or a control's save is in progress: nothing else may start it."""
        return self.controls is not None

    def __repr__(self) -> str:
        return (
            f"Task({self.activity.name!r}, {self.aggregate}, state={self.state.value},"
            f" tail={self.tail})"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Waiting:
    """Why a task waits and when it runs next, as the operator's status shows it.

    :ivar reason: ``None`` while it runs, or when it is ``COMPLETE``.
    :ivar next_run_at: when it runs next (aware, UTC); ``None`` when no time
        is known (a lazy task waits for a signal, but see ``recheck_at``; a
        suspended task waits for an operator).
    :ivar recheck_at: lazy: the backstop's re-check at the latest.
    :ivar control: an operator's control that waits for the current run to
        end (``"stop"``, ``"suspend"``, ``"resume"``, ``"restart"``), else ``None``.
    """

    reason: WaitReason | None
    next_run_at: datetime | None = None
    recheck_at: datetime | None = None
    control: str | None = None
