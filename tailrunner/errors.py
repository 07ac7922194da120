"""The exceptions tailrunner raises.

::

    TailrunnerError
    ├── InvalidArgument        bad input; ``field`` names it (ids, event types, sizes)
    ├── ConfigError            a bad config key or value; the message names key and value
    ├── PluginError            a plugin failed to load or returned no activity
    ├── InvalidOutcome         an activity reported a tail or time that cannot be used
    ├── EngineStopped          the engine stopped before a control landed
    ├── JournalError           talking to the journal failed
    │   ├── TailMismatch       Append's expected tail is not the aggregate's head
    │   ├── AggregateTypeMismatch  an append names another type than the aggregate has
    │   ├── JournalUnavailable the journal cannot be reached (retryable)
    │   └── StreamCancelled    a call ended with gRPC CANCELLED
    ├── StoreError             a journal or tail store cannot be opened or failed
    ├── AccessDenied           a server refused the caller (any server: journal, admin, operations)
    │   ├── NotAuthenticated   UNAUTHENTICATED: no token, or one the server does not know
    │   └── PermissionDenied   PERMISSION_DENIED: a read token on a call that changes something
    ├── WorkflowError          an aggregate (tailrunner.workflows) refused a command
    │   ├── VersionConflict    the caller's version is not the aggregate's head (names both)
    │   ├── RetryLimit         RETRY_NO_VC still conflicted after its bounded retries
    │   ├── NotFound           no aggregate with that id: it has no events
    │   └── CommandRefused     a behaviour's tell refused the command (names the state)
    │       ├── Uninitialized  the aggregate was never initialised
    │       ├── WrongState     the command does not fit the aggregate's state
    │       └── ArgumentNotIdempotent  a repeated init with another value; names the argument
    └── AdminError             a call to a runner's admin service failed
        ├── TaskNotFound       NOT_FOUND: no such task here
        ├── TaskNotControllable FAILED_PRECONDITION: not in this state
        ├── ControlNotStored   UNAVAILABLE: applied in memory, its save failed
        └── AdminUnavailable   the admin address cannot be reached (retryable)

gRPC and database errors are mapped to these where they enter tailrunner
(``raise JournalUnavailable(...) from exc``), once, keeping the cause.
Cancellation is never one of these: it propagates as the event loop's
cancellation exception. Only the cancellation of the engine's own scope
(shutdown, an operator's stop) stops a run; a ``CancelledError`` or a gRPC
``CANCELLED`` status from something the activity awaited is an error.

Activity outcomes (``SilentRetry``, ``SilentRetryAfter``, ``Failed``) are
exceptions too, but they are part of the activity contract and live in
:mod:`tailrunner.activities.outcomes`.
"""

from __future__ import annotations

from ulid import ULID


class TailrunnerError(Exception):
    """Base of every error tailrunner raises on purpose."""


class InvalidArgument(TailrunnerError, ValueError):
    """Bad input. ``field`` names the offending field or option."""

    def __init__(self, field: str, message: str, *, text: str | None = None) -> None:
        """:param text: the whole message, when ``"field: message"`` reads badly."""
        super().__init__(text or f"{field}: {message}")
        self.field = field
        self.reason = message


class ConfigError(TailrunnerError):
    """A config key or value that tailrunner cannot use."""


class PluginError(TailrunnerError):
    """A plugin that failed to load, or returned something that is not an activity."""

    def __init__(self, plugin: str, message: str) -> None:
        super().__init__(f"plugin {plugin!r}: {message}")
        self.plugin = plugin


class InvalidOutcome(TailrunnerError):
    """An activity returned, raised or checkpointed a tail (or time) that cannot be used.

    The message names the activity, the value and what is allowed; the run
    counts as failed and is retried from the last good tail.
    """


class EngineStopped(TailrunnerError):
    """The engine stopped before an operator's control could land on its task."""


class JournalError(TailrunnerError):
    """The journal refused a call or could not be reached."""


class TailMismatch(JournalError):
    """Append's expected tail was not the aggregate's head.

    ``expected`` is ``None`` when the append expected no events (``expect_new``);
    ``actual`` is ``None`` when the aggregate has none.
    """

    def __init__(self, expected: ULID | None, actual: ULID | None) -> None:
        wanted = "no events" if expected is None else f"tail {expected}"
        if actual is None:
            super().__init__(f"expected {wanted}, but the aggregate has no events")
        else:
            super().__init__(f"expected {wanted}, but the aggregate's head is {actual}")
        self.expected = expected
        self.actual = actual


class AggregateTypeMismatch(JournalError):
    """An append named another aggregate type than the aggregate already has."""


class JournalUnavailable(JournalError):
    """The journal could not be reached; worth retrying."""


class StoreError(TailrunnerError):
    """A store (journal or tails) could not be opened or failed."""


class LeaseLost(StoreError):
    """Scale-out: a write for a task whose segment this runner no longer holds.

    Nothing was written (the write was fenced, or not sent): the runner
    stops that segment's tasks, and their new owner resumes from the stored tails.
    """


class StreamCancelled(JournalError):
    """A journal call ended with gRPC ``CANCELLED``.

    A stop only when the engine cancelled the run; otherwise (the call was
    cancelled by something else) the run failed and is retried.
    """


class AdminError(TailrunnerError):
    """A call to a runner's admin service failed."""


class TaskNotFound(AdminError):
    """Neither the runner nor its tail store knows the task, or the runner does not run it."""


class TaskNotControllable(AdminError):
    """The control does not fit the task's state (stopping a complete task)."""


class ControlNotStored(AdminError):
    """A control was applied in the runner's memory, but its state could not be stored.

    The runner keeps retrying the save; until it succeeds, a restart of the
    runner would lose the control.
    """


class AccessDenied(TailrunnerError):
    """A server refused the caller: its token (or lack of one) does not let it in."""


class NotAuthenticated(AccessDenied):
    """The server wants a bearer token, and the call had none or one it does not know."""


class PermissionDenied(AccessDenied):
    """The token is known, but its role may not make this call (a read token appending)."""


class AdminUnavailable(AdminError):
    """The runner's admin address cannot be reached; worth retrying."""


class WorkflowError(TailrunnerError):
    """An aggregate of :mod:`tailrunner.workflows` could not take a command."""


class VersionConflict(WorkflowError):
    """The version a command was told against is not the aggregate's head."""

    def __init__(self, aggregate: str, expected: ULID | None, actual: ULID | None) -> None:
        super().__init__(
            f"{aggregate}: told at version {expected}, but the aggregate's version is {actual}"
        )
        self.aggregate = aggregate
        self.expected = expected
        self.actual = actual


class RetryLimit(WorkflowError):
    """``RETRY_NO_VC`` met a conflict on every one of its attempts."""

    def __init__(self, aggregate: str, attempts: int) -> None:
        super().__init__(f"{aggregate}: still conflicting after {attempts} attempts")
        self.aggregate = aggregate
        self.attempts = attempts


class NotFound(WorkflowError):
    """No aggregate has this id: the journal has no events for it."""

    def __init__(self, aggregate: str) -> None:
        super().__init__(f"{aggregate}: not found")
        self.aggregate = aggregate


class CommandRefused(WorkflowError):
    """A behaviour refused a command; the base of its typed refusals."""


class Uninitialized(CommandRefused):
    """A command other than the initial one on an aggregate that was never initialised."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what}: the aggregate is uninitialized (init it first)")
        self.what = what


class WrongState(CommandRefused):
    """Command ``what`` does not fit the aggregate's ``state``."""

    def __init__(self, state: str, what: str) -> None:
        super().__init__(f"{what} is not allowed in state {state}")
        self.state = state
        self.what = what


class ArgumentNotIdempotent(CommandRefused):
    """An idempotent command repeated with another value of ``argument``."""

    def __init__(self, argument: str, *, recorded: object, given: object) -> None:
        super().__init__(
            f"{argument}: the aggregate recorded {recorded!r}, the repeated command gave {given!r}"
        )
        self.argument = argument
        self.recorded = recorded
        self.given = given


# operations
#
#   TailrunnerError
#   └── OperationError          an operation (tailrunner.operations) refused a call; names it
#       ├── InvalidOperationName   not "operations/{id}" (also an InvalidArgument: INVALID_ARGUMENT)
#       ├── InvalidPageToken       not a token of this parent's children (also InvalidArgument)
#       ├── OperationNotFound      no such operation, or it was deleted (NOT_FOUND)
#       ├── OperationAlreadyExists the caller's id is taken (ALREADY_EXISTS)
#       ├── OperationFinished      finishing or updating a finished operation (FAILED_PRECONDITION)
#       ├── OperationNotDone       deleting an operation that is not done (FAILED_PRECONDITION)
#       └── WaitDeadlineExceeded   wait(raise_on_timeout=True) timed out (DEADLINE_EXCEEDED)


class OperationError(TailrunnerError):
    """A long-running operation could not be named, found or changed.

    :ivar operation: the operation's name (``operations/{id}``), as the caller gave it.
    """

    def __init__(self, operation: str, message: str) -> None:
        super().__init__(f"{operation}: {message}")
        self.operation = operation


class InvalidOperationName(OperationError, InvalidArgument):
    """Not an operation name: ``operations/`` and a UUID, or 1 to 63 of ``[a-z0-9-]``.

    Also an :class:`InvalidArgument` (``field`` names the argument), so it
    travels as ``INVALID_ARGUMENT`` with a field violation.
    """

    def __init__(self, operation: str, reason: str, *, field: str = "name") -> None:
        TailrunnerError.__init__(self, f"{field} {operation!r}: {reason}")
        self.operation = operation
        self.field = field
        self.reason = reason


class InvalidPageToken(OperationError, InvalidArgument):
    """A page token that no listing of ``operation``'s children gave (or a damaged one)."""

    def __init__(self, operation: str, token: str, reason: str) -> None:
        TailrunnerError.__init__(
            self, f"{operation}: page_token {token[:80]!r} is not one of its children's: {reason}"
        )
        self.operation = operation
        self.token = token
        self.field = "page_token"
        self.reason = reason


class OperationNotFound(OperationError):
    """No operation has this name: never created, deleted, or not an operation."""

    def __init__(self, operation: str) -> None:
        super().__init__(operation, "no such operation")


class OperationAlreadyExists(OperationError):
    """The id the caller chose is taken (ids are never reused, not even after a delete)."""

    def __init__(self, operation: str) -> None:
        super().__init__(operation, "already exists (choose another id)")


class OperationFinished(OperationError):
    """``what`` needs an unfinished operation, but it finished (in ``state``).

    A finished operation cannot be finished again (AIP-151), nor its metadata
    changed; a repeat of the very finish it recorded is not this error.
    """

    def __init__(self, operation: str, state: str, what: str) -> None:
        super().__init__(operation, f"{what} is not allowed: the operation is finished ({state})")
        self.state = state
        self.what = what


class OperationNotDone(OperationError):
    """``what`` needs a finished operation (deleting one), but it is still in ``state``."""

    def __init__(self, operation: str, state: str, what: str) -> None:
        super().__init__(operation, f"{what} is not allowed: the operation is not done ({state})")
        self.state = state
        self.what = what


class WaitDeadlineExceeded(OperationError):
    """``wait(…, raise_on_timeout=True)`` reached its timeout before the operation was done.

    A plain ``wait`` returns the not-done operation instead (AIP-151's
    ``WaitOperation``); this is seed 001's typed error, for callers that
    treat the timeout as a failure.
    """

    def __init__(self, operation: str, timeout: float) -> None:
        super().__init__(operation, f"not done after the wait's timeout of {timeout:g} s")
        self.timeout = timeout
