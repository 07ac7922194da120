"""``JournalService``: the grpc.aio servicer of ``tailrunner.v1.Journal``.

It validates requests (``INVALID_ARGUMENT`` naming the field), calls the
store, and ends a failed call with :func:`tailrunner.rpc_errors.abort`, which
maps tailrunner's errors to gRPC statuses for every service.
Watching and signals come from the :class:`~tailrunner.journal.hub.Hub`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import itertools
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import nullcontext
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable
from uuid import UUID

import grpc
from google.rpc import status_pb2
from ulid import ULID

from tailrunner.errors import (
    InvalidArgument,
    TailrunnerError,
)
from tailrunner.ids import ulid_from_bytes, ulid_to_bytes, uuid_from_bytes
from tailrunner.journal import append_checks
from tailrunner.journal.append_checks import AppendLimits
from tailrunner.journal.hub import Fresh, Hub, TakenSignals
from tailrunner.journal.store import (
    SKIPPED,
    JournalStore,
    RawCursor,
    ReadBudget,
    WireBatch,
    WireManyReader,
    check_request_id,
)
from tailrunner.journal.wire_format import (
    encode_event,
    event_id,
    events_messages,
    read_aggregates_response,
    signal_message,
    signals_response,
)
from tailrunner.model import AggregateRef, Event, NewEvent
from tailrunner.proto.v1 import journal_pb2
from tailrunner.rpc_errors import abort, failure_status

# The limits' defaults, importable from here too, where they were first.
MiB = append_checks.MiB
DEFAULT_MAX_EVENT_SIZE = append_checks.DEFAULT_MAX_EVENT_SIZE
DEFAULT_MAX_EVENTS_PER_APPEND = append_checks.DEFAULT_MAX_EVENTS_PER_APPEND
MAX_TYPE_LENGTH = append_checks.MAX_TYPE_LENGTH
#: Events per ``Events`` batch when the reader does not say (``max_batch`` = 0).
DEFAULT_BATCH = 1000
#: The most events per batch, whatever the reader asks for.
MAX_BATCH = 10_000
#: ``AppendBatch``: the most appends in one call.
MAX_BATCH_APPENDS = 1000
#: ``ReadAggregates``: the most reads in one call; events per response when
#: the request says 0 (``max_events``), and the cap.
MAX_READS = 1000
DEFAULT_READ_EVENTS = 1000
MAX_READ_EVENTS = 10_000
#: ``ListAggregates`` page size when the request says 0, and its cap.
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
#: A batch is cut into messages of about this many bytes, well below the
#: 4 MiB that gRPC clients accept by default.
_MESSAGE_BUDGET = 2 * MiB
#: Bytes of events one ``Events`` read keeps (and one event more): a batch
#: of big events is cut there. The batch is held until the reader takes it,
#: so this bounds what a reader that stopped reading pins in the server,
#: whatever batch size it asked for (1,000 events of 1 MiB would be 1 GiB).
_READ_BUDGET = 256 * 1024
#: Signals per ``SignalsResponse`` message.
_SIGNALS_PER_MESSAGE = 1000
#: Encoded signal batches kept for the subscribers that take the same batch,
#: at most this many and (but for one batch alone) this many bytes: with the
#: events signals carry, one batch may encode to megabytes.
_ENCODED_SIGNALS_KEPT = 64
_ENCODED_SIGNALS_BYTES = 16 * 1024 * 1024
_PAGE_TOKEN_VERSION = 1


_NO_METADATA: Mapping[str, str] = MappingProxyType({})

#: The full name of the service, as in the ``.proto``.
_DESCRIPTOR = journal_pb2.DESCRIPTOR.services_by_name["Journal"]
SERVICE = _DESCRIPTOR.full_name
_CAUGHT_UP = journal_pb2.EventsResponse(will_block=True).SerializeToString()
#: One ``ReadAggregates`` response is one message: never split its batches.
_UNSPLIT = 1 << 62

#: A batch ready to send: its messages (serialized ``EventsResponse``), the
#: cursor after it, whether more follow, its events if the byte budget cut it.
_Batch = tuple[list[bytes], bytes, bool, int]


@runtime_checkable
class WireEventReader(Protocol):
    """A store that keeps events in their wire form and reads them so (like SQLiteJournalStore)."""

    async def read_wire(
        self, aggregate_id: UUID, *, after: bytes, limit: int
    ) -> tuple[str, list[bytes]]: ...


class JournalService:
    """Serves one :class:`~tailrunner.journal.store.JournalStore` over gRPC.

    Register it with :func:`add_to_server`: ``Events`` yields its messages
    already serialized, which the generated registration would not take.
    """

    def __init__(
        self,
        store: JournalStore,
        hub: Hub,
        *,
        max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
        max_events_per_append: int = DEFAULT_MAX_EVENTS_PER_APPEND,
    ) -> None:
        """:param hub: must be registered as a listener of ``store``.
        :param max_event_size: bytes of type, data and metadata allowed per event.
        :param max_events_per_append: events allowed in one append.
        """
        self._limits = AppendLimits(
            max_event_size=max_event_size, max_events_per_append=max_events_per_append
        )
        self._store = store
        # A store that keeps the wire form spares the hot path all work per event.
        self._wire_reader = store if isinstance(store, WireEventReader) else None
        self._hub = hub
        self._encoded_signals: dict[int, tuple[TakenSignals, list[bytes]]] = {}
        self._encoded_bytes = 0

    async def Append(
        self, request: journal_pb2.AppendRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> journal_pb2.AppendResponse:
        try:
            return await self._append(request)
        except TailrunnerError as exc:
            await abort(context, exc, rpc="Append")

    async def AppendBatch(
        self, request: journal_pb2.AppendBatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> journal_pb2.AppendBatchResponse:
        appends = request.appends
        if len(appends) > MAX_BATCH_APPENDS:
            await abort(
                context,
                InvalidArgument(
                    "appends", f"{len(appends)} appends, over the limit of {MAX_BATCH_APPENDS}"
                ),
                rpc="AppendBatch",
            )
        # All at once: the store's group commit takes those that arrive while
        # one commits into its next transaction, so the batch shares fsyncs.
        outcomes = await asyncio.gather(*map(self._batched_append, appends))
        response = journal_pb2.AppendBatchResponse()
        add = response.results.add
        for outcome in outcomes:
            result = add()
            if isinstance(outcome, journal_pb2.AppendResponse):
                result.response.CopyFrom(outcome)
            else:
                result.error.CopyFrom(outcome)
        return response

    async def _batched_append(
        self, request: journal_pb2.AppendRequest
    ) -> journal_pb2.AppendResponse | status_pb2.Status:
        """One append of a batch: its response, or the status Append would fail with."""
        try:
            return await self._append(request)
        except TailrunnerError as exc:
            return failure_status(exc, rpc="AppendBatch")

    async def _append(self, request: journal_pb2.AppendRequest) -> journal_pb2.AppendResponse:
        """What ``Append`` does with one request.

        :raises TailrunnerError: what ``Append`` fails with (see :func:`abort`).
        """
        aggregate, events, expected_tail = self._parse_append(request)
        request_id = request.request_id or None
        if request_id is not None:
            check_request_id(request_id)
        result = await self._store.append(
            aggregate,
            events,
            expected_tail=expected_tail,
            request_id=request_id,
            expect_new=request.expect_new,
        )
        return journal_pb2.AppendResponse(
            tail=result.tail.bytes, event_ids=[event_id.bytes for event_id in result.event_ids]
        )

    async def Events(
        self, request: journal_pb2.EventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        try:
            aggregate_id = uuid_from_bytes(request.aggregate_id, field="aggregate_id")
            ulid_from_bytes(request.after, field="after")
        except InvalidArgument as exc:
            await abort(context, exc, rpc="Events")
        cursor: bytes = request.after
        limit = min(request.max_batch or DEFAULT_BATCH, MAX_BATCH)
        # Events per read: the batch size, unless the events are big (see _READ_BUDGET).
        read_limit = limit
        # Watch before the first read: an append committing after that read
        # still wakes the watcher, so no event falls between read and wait.
        with self._hub.watch(aggregate_id) if request.watch else nullcontext() as watcher:
            caught_up = False
            # The events the watcher was woken with, when they go on from the cursor.
            fresh: Fresh | None = None
            watcher_type = ""
            while True:
                if fresh is not None:
                    messages, cursor, more, cut_at = _fresh_batch(
                        fresh, watcher_type, request.aggregate_id, read_limit
                    )
                else:
                    try:
                        messages, cursor, more, cut_at = await self._read(
                            aggregate_id, request.aggregate_id, cursor, read_limit
                        )
                    except TailrunnerError as exc:
                        await abort(context, exc, rpc="Events")
                # A read cut short by its byte budget asks for as many events
                # next time; one that was not grows back towards the batch size.
                read_limit = cut_at or min(limit, 2 * read_limit)
                if messages:
                    for message in messages:
                        yield message
                    caught_up = caught_up or not more
                elif watcher is not None and not caught_up:
                    # An empty aggregate: tell the watcher it is caught up before blocking.
                    yield _CAUGHT_UP
                    caught_up = True
                if more:
                    fresh = None
                    continue
                if watcher is None or not await watcher.wait():
                    return
                # Woken with the new events and they start at the cursor:
                # send them without reading them back (a thread hop).
                fresh = watcher.fresh
                watcher_type = watcher.aggregate_type
                if fresh is not None and fresh.parent != cursor:
                    fresh = None

    async def _read(self, aggregate_id: UUID, raw_id: bytes, after: bytes, limit: int) -> _Batch:
        """The next batch as messages, the new cursor, whether more events follow, and
        how many events it holds if the byte budget cut it (else 0).

        The batch ends after ``limit`` events or after :data:`_READ_BUDGET`
        bytes of them, whichever comes first (at least one event).
        """
        # One event more than the batch tells whether this batch catches the reader up.
        if self._wire_reader is not None:
            aggregate_type, rows = await self._wire_reader.read_wire(
                aggregate_id, after=after, limit=limit + 1
            )
        else:
            events = await self._store.read(
                aggregate_id, after=ULID(after) if after else None, limit=limit + 1
            )
            aggregate_type = events[0].aggregate_type if events else ""
            rows = _stored_forms(events)
        more = len(rows) > limit
        if more:
            rows = rows[:limit]
        if not rows:
            return [], after, False, 0
        cut_at = 0
        if sum(map(len, rows)) > _READ_BUDGET:
            # Big events: keep what fits the budget; the rest is for the next read.
            kept = bisect.bisect_left(list(itertools.accumulate(map(len, rows))), _READ_BUDGET)
            if kept + 1 < len(rows):
                cut_at = kept + 1
                rows = rows[:cut_at]
                more = True
        messages = events_messages(
            rows, aggregate_type, raw_id, will_block=not more, budget=_MESSAGE_BUDGET
        )
        return messages, event_id(rows[-1]), more, cut_at

    async def ReadAggregates(
        self,
        request: journal_pb2.ReadAggregatesRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> bytes:
        """The response already serialized: each batch is framed from the stored events."""
        try:
            cursors = parse_reads(request.reads)
            batches = await read_many(self._store, cursors, max_events=request.max_events)
        except TailrunnerError as exc:
            await abort(context, exc, rpc="ReadAggregates")
        return aggregates_response(cursors, batches)

    async def AggregateSignals(
        self, request: journal_pb2.SignalsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        # The hub's first batch for a new subscriber is a resync: it tells the
        # reader it is subscribed, and to check once what came before.
        types = list(request.aggregate_types)
        for index, type_ in enumerate(types):
            if not type_:
                await abort(
                    context,
                    InvalidArgument(f"aggregate_types[{index}]", "must not be empty"),
                    rpc="AggregateSignals",
                )
        with self._hub.subscribe(types) as subscriber:
            while True:
                taken = await subscriber.take_with_events()
                if taken is None:
                    return
                for message in self._signal_messages(taken):
                    yield message

    def _signal_messages(self, taken: TakenSignals) -> list[bytes]:
        """``taken`` as serialized ``SignalsResponse`` messages, encoded once per batch.

        Subscribers that are level get the same batch from the hub: the last
        few batches' messages are kept, by identity, and the batch with them
        (so that its id is not reused while it is kept).
        """
        cached = self._encoded_signals.get(id(taken))
        if cached is not None and cached[0] is taken:
            return cached[1]
        messages = _signals_responses(taken)
        size = sum(map(len, messages))
        if (
            len(self._encoded_signals) >= _ENCODED_SIGNALS_KEPT
            or self._encoded_bytes + size > _ENCODED_SIGNALS_BYTES
        ):
            self._encoded_signals.clear()
            self._encoded_bytes = 0
        self._encoded_signals[id(taken)] = (taken, messages)
        self._encoded_bytes += size
        return messages

    async def ListAggregates(
        self,
        request: journal_pb2.ListAggregatesRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> journal_pb2.ListAggregatesResponse:
        type_filter = request.aggregate_type
        try:
            if request.page_size < 0:
                raise InvalidArgument("page_size", f"must not be negative, got {request.page_size}")
            page_size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
            after_id = decode_page_token(request.page_token, type_filter)
            found = await self._store.list_aggregates(
                type_filter or None, after_id=after_id, limit=page_size + 1
            )
        except TailrunnerError as exc:
            await abort(context, exc, rpc="ListAggregates")
        page = found[:page_size]
        response = journal_pb2.ListAggregatesResponse(
            next_page_token=encode_page_token(page[-1].id, type_filter)
            if len(found) > page_size
            else ""
        )
        for info in page:
            response.aggregates.add(
                type=info.type,
                id=info.id.bytes,
                head=ulid_to_bytes(info.head),
                event_count=info.event_count,
            )
        return response

    @property
    def limits(self) -> AppendLimits:
        """The limits its appends are held to (the server's in-process journal shares them)."""
        return self._limits

    def _parse_append(
        self, request: journal_pb2.AppendRequest
    ) -> tuple[AggregateRef, list[NewEvent], ULID | None]:
        limits = self._limits
        limits.check_aggregate_type(request.aggregate_type)
        aggregate = AggregateRef(
            type=request.aggregate_type,
            id=uuid_from_bytes(request.aggregate_id, field="aggregate_id"),
        )
        expected_tail = ulid_from_bytes(request.expected_tail, field="expected_tail")
        limits.check_event_count(len(request.events))
        events: list[NewEvent] = []
        append, check, no_metadata = events.append, limits.check_event, _NO_METADATA
        for index, new in enumerate(request.events):
            event_type, data, wire_metadata = new.type, new.data, new.metadata
            metadata = dict(wire_metadata) if wire_metadata else no_metadata
            check(index, event_type, data, metadata)
            append(NewEvent(type=event_type, data=data, metadata=metadata))
        return aggregate, events, expected_tail


def parse_reads(reads: Sequence[journal_pb2.AggregateCursor]) -> list[RawCursor]:
    """The raw cursors of ``ReadAggregatesRequest.reads``, checked.

    :raises InvalidArgument: naming ``reads`` (over :data:`MAX_READS`) or
        the field of the first bad id (``reads[3].aggregate_id``, ``reads[3].after``).
    """
    if len(reads) > MAX_READS:
        raise InvalidArgument("reads", f"{len(reads)} reads, over the limit of {MAX_READS}")
    cursors = [(read.aggregate_id, read.after) for read in reads]
    for index, (key, after) in enumerate(cursors):
        if len(key) != 16:
            uuid_from_bytes(key, field=f"reads[{index}].aggregate_id")
        if after and len(after) != 16:
            ulid_from_bytes(after, field=f"reads[{index}].after")
    return cursors


async def read_many(
    store: JournalStore, cursors: Sequence[RawCursor], *, max_events: int
) -> list[WireBatch]:
    """One batch per cursor in the stored form, under one budget (see ``ReadAggregates``).

    :param max_events: 0 for :data:`DEFAULT_READ_EVENTS`; capped at :data:`MAX_READ_EVENTS`.

    A :class:`~tailrunner.journal.store.WireManyReader` reads them all in
    one snapshot. Any other store is read cursor by cursor, each read in a
    snapshot of its own: the batches are each right, but not of one instant.
    """
    if len(cursors) > MAX_READS:
        raise InvalidArgument("reads", f"{len(cursors)} reads, over the limit of {MAX_READS}")
    limit = min(max_events or DEFAULT_READ_EVENTS, MAX_READ_EVENTS)
    if not cursors:
        return []
    if isinstance(store, WireManyReader):
        return await store.read_wire_many(cursors, max_events=limit, max_bytes=_READ_BUDGET)
    wire_reader = store if isinstance(store, WireEventReader) else None
    budget = ReadBudget(limit, _READ_BUDGET)
    batches: list[WireBatch] = []
    for key, after in cursors:
        left = budget.left
        if not left:
            batches.append(SKIPPED)
            continue
        aggregate_id = UUID(bytes=key)
        if wire_reader is not None:
            aggregate_type, rows = await wire_reader.read_wire(
                aggregate_id, after=after, limit=left + 1
            )
        else:
            events = await store.read(
                aggregate_id, after=ULID(after) if after else None, limit=left + 1
            )
            aggregate_type = events[0].aggregate_type if events else ""
            rows = _stored_forms(events)
        rows, complete = budget.take(rows, left)
        batches.append(WireBatch(aggregate_type, rows, complete))
    return batches


def aggregates_response(cursors: Sequence[RawCursor], batches: Sequence[WireBatch]) -> bytes:
    """The serialized ``ReadAggregatesResponse`` of ``batches``, one per cursor.

    Each batch is the ``EventsResponse`` that ``Events`` would send (its
    events carry their aggregate's fields), framed as a field of the response.
    """
    messages: list[bytes] = []
    append = messages.append
    for (key, _), (aggregate_type, rows, complete) in zip(cursors, batches, strict=True):
        if rows:
            (message,) = events_messages(
                rows, aggregate_type, key, will_block=complete, budget=_UNSPLIT
            )
            append(message)
        else:
            append(_CAUGHT_UP if complete else b"")
    return read_aggregates_response(messages)


def _stored_forms(events: Sequence[Event]) -> list[bytes]:
    """Events of a store that keeps no wire form, as a wire-form store keeps them."""
    return [
        encode_event(e.id.bytes, ulid_to_bytes(e.parent), e.type, e.data, e.metadata or None)
        for e in events
    ]


def encode_page_token(last_id: UUID, aggregate_type: str) -> str:
    """The opaque token of the page after the aggregate ``last_id``.

    It also records the type filter, so that a token is only used with the
    filter that made it.
    """
    raw = bytes((_PAGE_TOKEN_VERSION,)) + last_id.bytes + aggregate_type.encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_page_token(token: str, aggregate_type: str) -> UUID | None:
    """The last aggregate id of the previous page (``None`` for an empty token).

    :raises InvalidArgument: naming ``page_token`` when the token is not one
        this server made, or was made for another ``aggregate_type``.
    """
    if not token:
        return None
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        made_for = raw[17:].decode()
    except (binascii.Error, ValueError):
        raise InvalidArgument("page_token", "not a page token of this journal") from None
    if len(raw) < 17 or raw[0] != _PAGE_TOKEN_VERSION:
        raise InvalidArgument("page_token", "not a page token of this journal")
    if made_for != aggregate_type:
        raise InvalidArgument(
            "page_token",
            f"made for aggregate_type {made_for!r}, not {aggregate_type!r}",
        )
    return UUID(bytes=raw[1:17])


def add_to_server(service: JournalService, server: grpc.aio.Server) -> None:
    """Serve ``service`` as ``tailrunner.v1.Journal`` on ``server``.

    As the generated ``add_JournalServicer_to_server`` does, but ``Events``,
    ``ReadAggregates`` and ``AggregateSignals`` messages go out as the
    service serialized them.
    """
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Append": grpc.unary_unary_rpc_method_handler(
            service.Append,
            request_deserializer=journal_pb2.AppendRequest.FromString,
            response_serializer=journal_pb2.AppendResponse.SerializeToString,
        ),
        "AppendBatch": grpc.unary_unary_rpc_method_handler(
            service.AppendBatch,
            request_deserializer=journal_pb2.AppendBatchRequest.FromString,
            response_serializer=journal_pb2.AppendBatchResponse.SerializeToString,
        ),
        "Events": grpc.unary_stream_rpc_method_handler(
            service.Events,
            request_deserializer=journal_pb2.EventsRequest.FromString,
            response_serializer=_serialized,
        ),
        "ReadAggregates": grpc.unary_unary_rpc_method_handler(
            service.ReadAggregates,
            request_deserializer=journal_pb2.ReadAggregatesRequest.FromString,
            response_serializer=_serialized,
        ),
        "AggregateSignals": grpc.unary_stream_rpc_method_handler(
            service.AggregateSignals,
            request_deserializer=journal_pb2.SignalsRequest.FromString,
            response_serializer=_serialized,
        ),
        "ListAggregates": grpc.unary_unary_rpc_method_handler(
            service.ListAggregates,
            request_deserializer=journal_pb2.ListAggregatesRequest.FromString,
            response_serializer=journal_pb2.ListAggregatesResponse.SerializeToString,
        ),
    }
    declared = {method.name for method in _DESCRIPTOR.methods}
    if set(handlers) != declared:  # the .proto grew or lost a method: serve all or none
        raise RuntimeError(
            f"tailrunner.v1.Journal declares {sorted(declared)}, served are {sorted(handlers)}"
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


def _serialized(message: bytes) -> bytes:
    return message


def _signals_responses(taken: TakenSignals) -> list[bytes]:
    """The serialized ``SignalsResponse`` messages of a batch, each signal with its events.

    Each signal's events are framed as ``Events`` frames them (with their
    aggregate fields), so the client parses them as it parses a batch.
    """
    batch, fresh = taken
    signals = batch.signals
    encoded = [
        signal_message(
            signal.aggregate_type,
            signal.aggregate_id.bytes,
            ulid_to_bytes(signal.head),
            () if rows is None else rows.rows,
        )
        for signal, rows in zip(signals, fresh, strict=True)
    ]
    return [
        signals_response(
            encoded[start : start + _SIGNALS_PER_MESSAGE], resync=batch.resync and start == 0
        )
        for start in range(0, max(len(signals), 1), _SIGNALS_PER_MESSAGE)
    ]


def _fresh_batch(fresh: Fresh, aggregate_type: str, raw_id: bytes, limit: int) -> _Batch:
    """The batch ``Events`` sends of a watcher's fresh events (see ``_read``).

    They are few and small (the hub's bound is far below :data:`_READ_BUDGET`),
    so only the batch size can cut them.
    """
    rows = fresh.rows
    more = len(rows) > limit
    if more:
        rows = rows[:limit]
    messages = events_messages(
        rows, aggregate_type, raw_id, will_block=not more, budget=_MESSAGE_BUDGET
    )
    return messages, event_id(rows[-1]) if more else fresh.head, more, 0
