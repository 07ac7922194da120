"""The ceiling: a minimal grpc.aio server that speaks the journal's protocol and does nothing else.

- ``Events`` streams messages built once at start (the same events, in the
  same batch size, as the journal sends), or, with ``watch``, whatever
  ``Append`` pushes to the stream;
- ``Append`` pushes one message per event to every open watch of the
  aggregate and returns: no storage, no validation, no ids worth the name.

A bare client reading from it measures what gRPC on loopback costs, so a
tailrunner figure divided by it says how much of the ceiling tailrunner reaches.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Sequence

import grpc

from tailrunner.model import Event
from tailrunner.proto.v1 import journal_pb2, journal_pb2_grpc


def build_responses(events: Sequence[Event], *, batch: int) -> list[journal_pb2.EventsResponse]:
    """``events`` as the messages of an ``Events`` stream, ``batch`` events per message."""
    responses = []
    for start in range(0, len(events), batch):
        response = journal_pb2.EventsResponse()
        for event in events[start : start + batch]:
            response.events.add(
                id=event.id.bytes,
                parent=b"" if event.parent is None else event.parent.bytes,
                aggregate_type=event.aggregate_type,
                aggregate_id=event.aggregate_id.bytes,
                type=event.type,
                data=event.data,
            )
        responses.append(response)
    if responses:
        responses[-1].will_block = True
    return responses


class BaselineJournal(journal_pb2_grpc.JournalServicer):
    def __init__(self, prebuilt: dict[bytes, list[journal_pb2.EventsResponse]]) -> None:
        self._prebuilt = prebuilt
        self._watches: dict[bytes, set[asyncio.Queue[journal_pb2.EventsResponse]]] = {}
        self._ids = itertools.count(1)

    async def Events(
        self, request: journal_pb2.EventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[journal_pb2.EventsResponse]:
        if not request.watch:
            for response in self._prebuilt.get(request.aggregate_id, ()):
                yield response
            return
        queue: asyncio.Queue[journal_pb2.EventsResponse] = asyncio.Queue()
        watches = self._watches.setdefault(request.aggregate_id, set())
        watches.add(queue)
        try:
            yield journal_pb2.EventsResponse(will_block=True)
            while True:
                yield await queue.get()
        finally:
            watches.discard(queue)

    async def Append(
        self, request: journal_pb2.AppendRequest, context: grpc.aio.ServicerContext
    ) -> journal_pb2.AppendResponse:
        ids = []
        response = journal_pb2.EventsResponse(will_block=True)
        for new in request.events:
            raw = next(self._ids).to_bytes(16, "big")
            ids.append(raw)
            response.events.add(
                id=raw,
                aggregate_type=request.aggregate_type,
                aggregate_id=request.aggregate_id,
                type=new.type,
                data=new.data,
            )
        for queue in self._watches.get(request.aggregate_id, ()):
            queue.put_nowait(response)
        return journal_pb2.AppendResponse(tail=ids[-1], event_ids=ids)


async def start_baseline(
    prebuilt: dict[bytes, list[journal_pb2.EventsResponse]],
) -> tuple[grpc.aio.Server, str]:
    """Serve :class:`BaselineJournal` on 127.0.0.1 (an ephemeral port); returns the address."""
    server = grpc.aio.server(
        options=[("grpc.so_reuseport", 0), ("grpc.max_send_message_length", -1)]
    )
    journal_pb2_grpc.add_JournalServicer_to_server(BaselineJournal(prebuilt), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"
