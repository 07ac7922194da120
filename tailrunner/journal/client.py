"""``JournalClient``: the :class:`~tailrunner.journal.api.JournalApi` over gRPC.

gRPC errors are mapped to :mod:`tailrunner.errors` by
:func:`tailrunner.rpc_errors.from_rpc_error` with this client's table,
:data:`JOURNAL_ERRORS`:

==========================================  ==========================================
status                                      raised
==========================================  ==========================================
``INVALID_ARGUMENT``                        :class:`InvalidArgument` (``BadRequest``)
``FAILED_PRECONDITION`` + ``TailMismatch``  :class:`TailMismatch` (the actual tail)
``FAILED_PRECONDITION`` (other)             :class:`AggregateTypeMismatch`
``CANCELLED``                               :class:`StreamCancelled`
``UNAVAILABLE``, ``DEADLINE_EXCEEDED`` …    :class:`JournalUnavailable`
anything else                               :class:`JournalError`
==========================================  ==========================================
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from types import TracebackType
from typing import Self
from uuid import UUID

import grpc
import structlog
from ulid import ULID

from tailrunner.errors import (
    AggregateTypeMismatch,
    InvalidArgument,
    JournalError,
    JournalUnavailable,
    StreamCancelled,
)
from tailrunner.ids import ulid_from_bytes, ulid_to_bytes
from tailrunner.journal.api import Cursor
from tailrunner.journal.append_batching import _AppendCoalescer
from tailrunner.journal.received import received_batch, received_events
from tailrunner.journal.store import check_expect_new, check_request_id
from tailrunner.model import (
    AggregateInfo,
    AggregateRef,
    AppendResult,
    EventBatch,
    NewEvent,
    Signal,
    SignalBatch,
)
from tailrunner.proto.v1 import journal_pb2, journal_pb2_grpc
from tailrunner.reconnect import DEFAULT_RECONNECT, ReconnectPolicy
from tailrunner.rpc_errors import ClientErrors, from_rpc_error
from tailrunner.security.channels import aio_channel, bearer, warn_cleartext_token
from tailrunner.security.tls import ClientTls

log = structlog.get_logger(__name__)

#: Worth retrying: the journal is down, overloaded, or restarting.
_UNAVAILABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)
#: What the journal's status codes mean (the details are read before these).
JOURNAL_ERRORS = ClientErrors(
    other=JournalError,
    unavailable=lambda code, message: JournalUnavailable(f"{code.name}: {message}"),
    retryable=_UNAVAILABLE,
    by_code={
        grpc.StatusCode.FAILED_PRECONDITION: AggregateTypeMismatch,
        grpc.StatusCode.CANCELLED: lambda message: StreamCancelled(
            message or "the call was cancelled"
        ),
    },
)
_CHANNEL_OPTIONS = (
    # The journal bounds its messages itself (events have a size limit).
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
)

#: Seconds between keepalive pings, and to wait for each one's answer: a
#: peer that went silent (a black-holed network: no FIN, no RST) is noticed
#: after about twice this, and the streams on it fail and are retried.
DEFAULT_KEEPALIVE = 10.0
#: Seconds a runner's unary call to the journal may take (``journal.call_timeout``).
DEFAULT_CALL_TIMEOUT = 30.0


def keepalive_options(seconds: float) -> tuple[tuple[str, int], ...]:
    """The channel options that ping the server every ``seconds``, even between calls."""
    ms = max(1, round(seconds * 1000))
    return (
        ("grpc.keepalive_time_ms", ms),
        ("grpc.keepalive_timeout_ms", ms),
        # Newer gRPC cores time the ping's answer by this one as well.
        ("grpc.http2.ping_timeout_ms", ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    )


class JournalClient:
    """A journal reached over gRPC; implements :class:`~tailrunner.journal.api.JournalApi`.

    ::

        async with JournalClient.connect("127.0.0.1:7740") as journal:
            result = await journal.append(ref, [NewEvent(type="created")])
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        timeout: float | None = None,
        close_channel: bool = False,
        token: str | None = None,
    ) -> None:
        """Use a channel the caller made; :meth:`connect` makes one.

        :param timeout: seconds for unary calls (``None``: no deadline).
        :param close_channel: :meth:`aclose` closes ``channel`` too.
        :param token: sent as ``authorization: Bearer <token>`` with every call.
        """
        self._channel = channel
        self._stub = journal_pb2_grpc.JournalStub(channel)
        self._timeout = timeout
        self._close_channel = close_channel
        self._metadata = bearer(token) or None
        self._appends = _AppendCoalescer(
            self._stub, JOURNAL_ERRORS, timeout=timeout, metadata=self._metadata
        )

    @classmethod
    def connect(
        cls,
        address: str,
        *,
        timeout: float | None = None,
        reconnect: ReconnectPolicy = DEFAULT_RECONNECT,
        keepalive: float | None = DEFAULT_KEEPALIVE,
        tls: ClientTls | None = None,
        token: str | None = None,
    ) -> JournalClient:
        """A client of the journal at ``address`` (``HOST:PORT``).

        The connection is made by the first call, which raises
        :class:`~tailrunner.errors.JournalUnavailable` when nothing answers.
        Call it with the event loop running.

        :param timeout: seconds for unary calls (``None``: no deadline).
        :param reconnect: also bounds the channel's own reconnect backoff.
            gRPC's default grows to 120 s, and until it tries again every
            call fails at once: after a long outage the journal's return
            would go unnoticed for up to two minutes.
        :param keepalive: seconds between keepalive pings (:data:`DEFAULT_KEEPALIVE`);
            ``None``: no pings, and a silent partition goes unnoticed.
        :param tls: TLS toward the journal (``None``: plaintext).
        :param token: the bearer token the journal wants, if it wants one.
        :raises InvalidArgument: a TLS file cannot be read (names its option).
        """
        options = (
            *_CHANNEL_OPTIONS,
            *(() if keepalive is None else keepalive_options(keepalive)),
            ("grpc.initial_reconnect_backoff_ms", max(1, round(reconnect.initial * 1000))),
            ("grpc.max_reconnect_backoff_ms", max(1, round(reconnect.max_delay * 1000))),
        )
        warn_cleartext_token(address, tls=tls, token=token, server="journal")
        channel = aio_channel(address, tls=tls, options=options)
        return cls(channel, timeout=timeout, close_channel=True, token=token)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the channel (when this client made it); open calls are cancelled."""
        if self._close_channel:
            await self._channel.close()

    async def append(
        self,
        aggregate: AggregateRef,
        events: Sequence[NewEvent],
        *,
        expected_tail: ULID | None = None,
        request_id: str | None = None,
        expect_new: bool = False,
    ) -> AppendResult:
        """Append events to one aggregate; all commit, or none.

        Appends made while another of this client is in flight go to the
        journal together in one call when it returns, each still its own
        append (:mod:`~tailrunner.journal.append_batching`). Cancelled
        before it was sent, an append is not sent; after, it may commit.

        :param request_id: makes the append safe to retry after a timeout:
            the journal returns the first append's result for a repeat.
        :param expect_new: commit only if the aggregate has no events.

        :raises TailMismatch: ``expected_tail`` is set and is not the head,
            or ``expect_new`` is set and the aggregate has events (then
            ``expected`` is ``None``); ``actual`` is the head.
        :raises AggregateTypeMismatch: the aggregate has another type.
        :raises InvalidArgument: the journal refused the input (names the field).
        :raises JournalUnavailable: the journal cannot be reached.
        """
        # Refused here, as the journal would, without a round trip.
        check_expect_new(expect_new=expect_new, expected_tail=expected_tail)
        request = journal_pb2.AppendRequest(
            aggregate_type=aggregate.type,
            aggregate_id=aggregate.id.bytes,
            expected_tail=ulid_to_bytes(expected_tail),
            expect_new=expect_new,
        )
        if request_id is not None:
            if not request_id:
                # On the wire "" is no request id: refused here, as the journal would.
                check_request_id(request_id)
            request.request_id = request_id
        # Fields set one by one on messages made in place: a quarter of what
        # add(type=..., data=..., metadata=...) costs per event.
        add = request.events.add
        for event in events:
            message = add()
            message.type = event.type
            message.data = event.data
            if event.metadata:
                message.metadata.update(event.metadata)
        # Concurrent appends of this client share calls (see append_batching).
        response = await self._appends.append(request)
        return AppendResult(
            tail=ULID(response.tail), event_ids=tuple(ULID(raw) for raw in response.event_ids)
        )

    async def events(
        self,
        aggregate_id: UUID,
        *,
        after: ULID | None = None,
        watch: bool = False,
        max_batch: int = 0,
    ) -> AsyncGenerator[EventBatch, None]:
        """Batches of the aggregate's events after ``after``.

        Without ``watch`` the generator ends after the last event; with it,
        it blocks for new events, and ends when the journal shuts down.
        Closing the generator cancels the call.

        :param max_batch: the largest batch wanted (0: the journal's default).
        :raises JournalUnavailable: the journal cannot be reached or went away.
        :raises StreamCancelled: the call was cancelled (a stop, not a failure).
        """
        request = journal_pb2.EventsRequest(
            aggregate_id=aggregate_id.bytes,
            after=ulid_to_bytes(after),
            watch=watch,
            max_batch=max_batch,
        )
        call = self._stub.Events(request, metadata=self._metadata)
        try:
            async for response in call:
                yield received_batch(response, aggregate_id)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, JOURNAL_ERRORS) from exc
        finally:
            call.cancel()

    async def read_aggregates(
        self, reads: Sequence[Cursor], *, max_events: int = 0
    ) -> list[EventBatch]:
        """The events of many aggregates after their tails, in one call and one snapshot.

        One batch per read, in order; see
        :meth:`~tailrunner.journal.api.AggregatesReader.read_aggregates`.

        :param max_events: the most events in all (0: the journal's default, 1000).
        :raises InvalidArgument: more than 1000 reads, or a negative ``max_events``.
        :raises JournalUnavailable: the journal cannot be reached.
        """
        if max_events < 0:
            raise InvalidArgument("max_events", f"must not be negative, got {max_events}")
        request = journal_pb2.ReadAggregatesRequest(max_events=max_events)
        add = request.reads.add
        for aggregate_id, after in reads:
            cursor = add()
            cursor.aggregate_id = aggregate_id.bytes
            if after is not None:
                cursor.after = after.bytes
        try:
            response = await self._stub.ReadAggregates(
                request, timeout=self._timeout, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, JOURNAL_ERRORS) from exc
        batches = response.batches
        if len(batches) != len(reads):
            raise JournalError(f"ReadAggregates: {len(batches)} batches for {len(reads)} reads")
        return [
            received_batch(batch, aggregate_id)
            for batch, (aggregate_id, _) in zip(batches, reads, strict=True)
        ]

    async def signals(
        self, aggregate_types: Sequence[str] = ()
    ) -> AsyncGenerator[SignalBatch, None]:
        """The journal's "aggregate changed" signals, coalesced per aggregate.

        A batch with ``resync`` means: re-check every aggregate. The first
        batch of every stream is one (appends before the stream began were
        not signalled; all after it are); later ones mean signals were
        dropped for a slow reader. Runs until closed, or until the journal
        shuts down.

        :param aggregate_types: only these types (all when empty).
        :raises JournalUnavailable: the journal cannot be reached or went away.
        """
        call = self._stub.AggregateSignals(
            journal_pb2.SignalsRequest(aggregate_types=list(aggregate_types)),
            metadata=self._metadata,
        )
        try:
            async for response in call:
                yield SignalBatch(
                    signals=tuple(map(_signal, response.signals)), resync=response.resync
                )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, JOURNAL_ERRORS) from exc
        finally:
            call.cancel()

    async def list_aggregates(
        self,
        aggregate_type: str | None = None,
        *,
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[AggregateInfo], str]:
        """One page of aggregates, ordered by id, and the next page's token ("" on the last).

        :param page_size: 0 for the journal's default (100); at most 1000.
        :raises InvalidArgument: a bad ``page_token`` or ``page_size``.
        :raises JournalUnavailable: the journal cannot be reached.
        """
        request = journal_pb2.ListAggregatesRequest(
            aggregate_type=aggregate_type or "", page_size=page_size, page_token=page_token
        )
        try:
            response = await self._stub.ListAggregates(
                request, timeout=self._timeout, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, JOURNAL_ERRORS) from exc
        infos = [
            AggregateInfo(
                type=item.type,
                id=UUID(bytes=item.id),
                head=ulid_from_bytes(item.head, field="head"),
                event_count=item.event_count,
            )
            for item in response.aggregates
        ]
        return infos, response.next_page_token

    async def aggregates(
        self, aggregate_type: str | None = None, *, page_size: int = 0
    ) -> AsyncGenerator[AggregateInfo, None]:
        """Every aggregate (of ``aggregate_type``, or all), page after page, ordered by id."""
        token = ""
        while True:
            infos, token = await self.list_aggregates(
                aggregate_type, page_size=page_size, page_token=token
            )
            for info in infos:
                yield info
            if not token:
                return


def _signal(message: journal_pb2.Signal) -> Signal:
    """A received ``Signal``; its events (if any) as an ``Events`` batch, parsed lazily."""
    aggregate_id = UUID(bytes=message.aggregate_id)
    batch: EventBatch | None = None
    if message.events:
        # Copied out (at most 64 events): a sub-message would keep the whole
        # parsed response, up to 1,000 signals, alive while a task waits to run.
        detached = journal_pb2.EventsResponse()
        detached.events.extend(message.events)
        # The journal sends them only when they end at head: the reader is caught up.
        batch = received_events(detached.events, aggregate_id, will_block=True)
    return Signal(
        aggregate_type=message.aggregate_type,
        aggregate_id=aggregate_id,
        head=ulid_from_bytes(message.head, field="head"),
        events=batch,
    )
