"""The errors of the admin service and its client.

::

    TailrunnerError                 (tailrunner.errors)
    └── AdminError                  an admin call failed
        ├── TaskNotFound            NOT_FOUND: no such task here
        ├── TaskNotControllable     FAILED_PRECONDITION: not in this state
        ├── NotAuthenticated        UNAUTHENTICATED: no token, or the wrong one
        └── AdminUnavailable        the admin address cannot be reached

:class:`~tailrunner.errors.InvalidArgument` (``INVALID_ARGUMENT``) keeps
its field on both sides.
"""

from __future__ import annotations

from tailrunner.errors import TailrunnerError


class AdminError(TailrunnerError):
    """An admin call failed."""


class TaskNotFound(AdminError):
    """Neither the runner nor its tail store knows the task, or the runner does not run it."""


class TaskNotControllable(AdminError):
    """The control does not fit the task's state (stopping a complete task)."""


class NotAuthenticated(AdminError):
    """The runner wants a bearer token, and the call had none or another one."""


class AdminUnavailable(AdminError):
    """The runner's admin address cannot be reached; worth retrying."""
