"""``JournalApi``: what the engines, the runner and activities need of a journal.

:class:`~tailrunner.journal.client.JournalClient` implements it over gRPC;
:mod:`tailrunner.testing` implements it with fakes for unit tests.
:class:`AggregatesReader` is optional: a journal that has it lets the
engines catch many tasks up with one call.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import Protocol, runtime_checkable
from uuid import UUID

from ulid import ULID

from tailrunner.model import (
    AggregateInfo,
    AggregateRef,
    AppendResult,
    EventBatch,
    NewEvent,
    SignalBatch,
)


class JournalApi(Protocol):
    async def append(
        self,
        aggregate: AggregateRef,
        events: Sequence[NewEvent],
        *,
        expected_tail: ULID | None = None,
        request_id: str | None = None,
        expect_new: bool = False,
    ) -> AppendResult:
        """Append events to one aggregate.

        :param expected_tail: ``None`` for no check; otherwise the head the
            aggregate must have.
        :param expect_new: the aggregate must have no events: the check
            ``expected_tail=None`` cannot ask for, so that of two racing first
            appends only one lands. Not together with ``expected_tail``.
        :param request_id: makes the append safe to retry: a repeat with the
            request id of an earlier append to the same aggregate appends
            nothing and returns the earlier result (for the journal's window
            of request ids; see ``AppendRequest.request_id`` in journal.proto),
            even when ``expected_tail`` or ``expect_new`` no longer holds.

        :raises TailMismatch: ``expected_tail`` is set and is not the head, or
            ``expect_new`` is set and the aggregate has events (``expected``
            is then ``None``); ``actual`` is the head.
        :raises InvalidArgument: the journal refused the input (names the
            field), e.g. ``expect_new`` together with ``expected_tail``.
        :raises JournalUnavailable: the journal cannot be reached.
        """
        ...

    def events(
        self,
        aggregate_id: UUID,
        *,
        after: ULID | None = None,
        watch: bool = False,
        max_batch: int = 0,
    ) -> AsyncGenerator[EventBatch, None]:
        """Batches of the aggregate's events after ``after``.

        Without ``watch`` the generator ends after the last event; with it,
        it blocks for new events. Closing the generator cancels the call.

        :raises JournalUnavailable: the journal cannot be reached or went away.
        :raises StreamCancelled: the call was cancelled (a stop, not a failure).
        """
        ...

    def signals(self, aggregate_types: Sequence[str] = ()) -> AsyncGenerator[SignalBatch, None]:
        """The journal's "aggregate changed" signals; runs until closed or broken.

        :raises JournalUnavailable: the journal cannot be reached or went away.
        """
        ...

    async def list_aggregates(
        self,
        aggregate_type: str | None = None,
        *,
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[AggregateInfo], str]:
        """One page of aggregates and the token of the next ("" on the last page)."""
        ...


#: One read of :meth:`AggregatesReader.read_aggregates`: an aggregate and the tail to read after.
Cursor = tuple[UUID, ULID | None]


@runtime_checkable
class AggregatesReader(Protocol):
    async def read_aggregates(
        self, reads: Sequence[Cursor], *, max_events: int = 0
    ) -> list[EventBatch]:
        """The events of many aggregates after their tails, in one call and one snapshot.

        One batch per read, in the order of ``reads``. A batch with
        ``will_block`` holds every event of its aggregate after its tail (it
        may be empty) at the time of the read; one without was cut by the
        call's budget (``max_events``, 0: the journal's default, or about
        256 KiB of events in all): read on with :meth:`JournalApi.events`
        after its last event.

        :raises InvalidArgument: more than 1,000 reads.
        :raises JournalUnavailable: the journal cannot be reached.
        """
        ...
