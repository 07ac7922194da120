"""The errors a ping-registry command can raise.

The framework's refusals (:mod:`tailrunner.errors`, under ``CommandRefused``)
are re-exported here, so that ping-registry code imports its errors from one
place; the index adds :class:`UnknownWorkflow`::

    CommandRefused
    ├── Uninitialized          the workflow has not been started (no init yet)
    ├── ArgumentNotIdempotent  a repeated command differs in ``argument``
    ├── WrongState             ``what`` is not allowed in ``state``
    └── UnknownWorkflow        the index has no such workflow
"""

from __future__ import annotations

from uuid import UUID

from tailrunner.errors import ArgumentNotIdempotent, CommandRefused, Uninitialized, WrongState

__all__ = [
    "ArgumentNotIdempotent",
    "CommandRefused",
    "Uninitialized",
    "UnknownWorkflow",
    "WrongState",
]


class UnknownWorkflow(CommandRefused):
    """The index has no entry for ``workflow``."""

    def __init__(self, workflow: UUID, what: str) -> None:
        super().__init__(f"{what}: workflow {workflow} is not in the index")
        self.workflow = workflow
        self.what = what
