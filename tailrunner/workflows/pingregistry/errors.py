"""The errors a ping-registry command can raise.

::

    TailrunnerError
    └── CommandRejected          the behaviour refused a command
        ├── Uninitialized        the workflow has not been started (no init yet)
        ├── ArgumentNotIdempotent  a repeated command differs in ``argument``
        ├── WrongState           ``what`` is not allowed in ``state``
        └── UnknownWorkflow      the index has no such workflow

They are local to this package for now; the aggregate framework
(:mod:`tailrunner.workflows`) may later own the shared ones.
"""

from __future__ import annotations

from uuid import UUID

from tailrunner.errors import TailrunnerError


class CommandRejected(TailrunnerError):
    """The behaviour refused a command: nothing was appended."""


class Uninitialized(CommandRejected):
    """A command other than init on a workflow that has no events yet."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what}: the workflow is uninitialized (init it first)")
        self.what = what


class ArgumentNotIdempotent(CommandRejected):
    """A command repeated with another value of ``argument`` than the first time."""

    def __init__(self, argument: str, *, recorded: object, given: object) -> None:
        super().__init__(
            f"{argument}: the workflow recorded {recorded!r}, the repeated command gave {given!r}"
        )
        self.argument = argument
        self.recorded = recorded
        self.given = given


class WrongState(CommandRejected):
    """Command ``what`` is not allowed while the workflow is in ``state``."""

    def __init__(self, state: str, what: str) -> None:
        super().__init__(f"{what} is not allowed in state {state}")
        self.state = state
        self.what = what


class UnknownWorkflow(CommandRejected):
    """The index has no entry for ``workflow``."""

    def __init__(self, workflow: UUID, what: str) -> None:
        super().__init__(f"{what}: workflow {workflow} is not in the index")
        self.workflow = workflow
        self.what = what
