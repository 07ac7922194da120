"""``TaskOwnership``: what an engine asks when several runners share the tasks (scale-out).

With one runner every task is the engine's. In a cluster
(:class:`tailrunner.scaleout.membership.Membership`) a task belongs to the
runner that holds its segment's lease: the engine starts a run only when
:meth:`TaskOwnership.allows` says so, and records the lease the run held
in its run record. Tasks whose segment was lost or given back leave the
engine (:meth:`~tailrunner.engines.base.Engine.retire`,
:meth:`~tailrunner.engines.base.Engine.evict`).
"""

from __future__ import annotations

from typing import Protocol
from uuid import UUID


class HeldLease(Protocol):
    """The lease a run holds: who and under which epoch."""

    @property
    def owner(self) -> str: ...

    @property
    def epoch(self) -> int: ...


class TaskOwnership(Protocol):
    def allows(self, activity: str, aggregate_id: UUID) -> bool:
        """Whether a run of the task may start now on this runner."""
        ...

    def lease(self, activity: str, aggregate_id: UUID) -> HeldLease | None:
        """The lease the task's segment is held under; ``None`` when it is not held."""
        ...
