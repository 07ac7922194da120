"""The ping-registry workflow's state: its state codes, pings and summary.

A :class:`State` is a frozen value; :func:`~tailrunner.workflows.pingregistry.
behaviour.advance` returns a new one for each event and never changes the old.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from ulid import ULID


class StateCode(enum.Enum):
    """How far a workflow is, in the order it gets there (seed 003's state codes)."""

    UNINITIALIZED = "uninitialized"
    """No event yet."""
    INITIALIZED = "initialized"
    """Started: it has a registry and a deadline, no ping yet."""
    APPENDING = "appending"
    """At least one ping posted, no summary yet."""
    SUMMARIZED = "summarized"
    """The summary is posted; no more pings."""
    COMPLETED = "completed"
    """The admin's commit began (completed on the workflow)."""
    TERMINATED = "terminated"
    """The commit's last step (committed) is recorded: the history is closed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping:
    """One ping as the workflow recorded it.

    :ivar event_id: the id of the event that posted it.
    """

    code: int
    message: str
    pinger: str
    event_id: ULID


@dataclass(frozen=True, slots=True, kw_only=True)
class Summary:
    """The summary: its status, and the pings it gathered.

    :ivar code: 0 when gathered as planned, not 0 when aborted.
    :ivar event_id: the id of the event that posted it.
    """

    code: int
    message: str
    pings: tuple[Ping, ...]
    event_id: ULID


@dataclass(frozen=True, slots=True, kw_only=True)
class State:
    """One ping-registry workflow as its events have made it.

    :ivar registry: empty and ``deadline`` ``None`` until initialized.
    :ivar pings: the pings posted so far, in order; frozen by the summary.
    :ivar summary: ``None`` until summarized.
    :ivar started: the id of the event that started it (its time is the
        workflow's creation time); ``None`` until initialized.
    """

    id: UUID
    code: StateCode = StateCode.UNINITIALIZED
    registry: str = ""
    deadline: datetime | None = None
    started: ULID | None = None
    pings: tuple[Ping, ...] = ()
    summary: Summary | None = None

    def pings_by(self, pinger: str) -> int:
        """How many pings ``pinger`` has posted (a restarted pinger posts only the rest)."""
        return sum(1 for ping in self.pings if ping.pinger == pinger)


def new_state(workflow_id: UUID) -> State:
    """The state of a workflow that has no events yet."""
    return State(id=workflow_id)
