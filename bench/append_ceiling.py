"""One-event appends against their honest ceiling: a raw-sqlite3 gRPC server.

tailrunner: the journal server (SQLite store) in its own process; a
:class:`~tailrunner.journal.client.JournalClient` in this one appends one
event per call to one aggregate, one call at a time.

Ceiling: the minimal grpc.aio server of this module (``python -m
bench.append_ceiling serve PATH SYNCHRONOUS``), in its own process, whose
``Append`` does what any server must and nothing more: ULIDs for the events,
then on the event loop ``BEGIN IMMEDIATE``, the same plain-column insert as
the raw baseline of :mod:`bench.journal_appends` (``WITHOUT ROWID`` key), and
``COMMIT``, at the same ``synchronous``; no validation, no aggregates row, no
request ids, no fan-out. The same client calls both, so what the client costs
is on both sides; the two servers take turns.

Goal: at ``FULL`` (an fsync per commit) tailrunner ≥ 0.7 of the ceiling.
``NORMAL`` (no fsync per commit) shows the CPU cost, with no goal.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from typing import Any

import anyio
import grpc

from bench.common import (
    Figure,
    Goal,
    Reporter,
    child,
    median,
    quiet_logs,
    run_module,
    serving,
    temp_dir,
)
from bench.journal_appends import _RAW_INSERT, _RAW_SCHEMA, client_appends, make_batches
from tailrunner.ids import next_ulids
from tailrunner.journal.client import JournalClient
from tailrunner.proto.v1 import journal_pb2


class RawSqliteJournal:
    """``Append`` only: one transaction of plain inserts, on the event loop."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        # Heads in memory: the ceiling reads nothing back from the file.
        self._heads: dict[bytes, Any] = {}

    async def Append(
        self, request: journal_pb2.AppendRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> journal_pb2.AppendResponse:
        key = request.aggregate_id
        head = self._heads.get(key)
        ids = next_ulids(head, len(request.events))
        raw = [i.bytes for i in ids]
        parents = [None if head is None else head.bytes, *raw[:-1]]
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            _RAW_INSERT,
            [
                (key, id_, parent, new.type, new.data, None)
                for id_, parent, new in zip(raw, parents, request.events, strict=True)
            ],
        )
        conn.execute("COMMIT")
        self._heads[key] = ids[-1]
        return journal_pb2.AppendResponse(tail=raw[-1], event_ids=raw)


async def serve(path: str, synchronous: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute(_RAW_SCHEMA)
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    append = grpc.unary_unary_rpc_method_handler(
        RawSqliteJournal(conn).Append,
        request_deserializer=journal_pb2.AppendRequest.FromString,
        response_serializer=journal_pb2.AppendResponse.SerializeToString,
    )
    # Registered as the generated code registers it (grpc's fast path), as the journal does.
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("tailrunner.v1.Journal", {"Append": append}),)
    )
    server.add_registered_method_handlers("tailrunner.v1.Journal", {"Append": append})
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    reporter = Reporter()
    reporter.send(address=f"127.0.0.1:{port}")
    try:
        while True:
            await reporter.receive()
    except EOFError:
        pass
    finally:
        with anyio.CancelScope(shield=True):
            await server.stop(None)
        conn.close()


async def measure(quick: bool) -> list[Figure]:
    figures: list[Figure] = []
    # Short blocks, many turns: the disk's fsync time swings by 3x on this
    # shared machine, and a swing should hit both sides alike.
    events = 300 if quick else 400
    repeats = 1 if quick else 7
    async with temp_dir("append-ceiling") as tmp:
        for synchronous in ("FULL", "NORMAL"):
            url = f"sqlite:///{tmp / f'journal-{synchronous}.db'}?synchronous={synchronous}"
            raw_path = str(tmp / f"ceiling-{synchronous}.db")
            async with (
                serving("journal", "--store", url) as ours_address,
                child("bench.append_ceiling", "serve", raw_path, synchronous) as ceiling,
            ):
                theirs_address = str((await ceiling.read())["address"])
                async with (
                    JournalClient.connect(ours_address) as ours_client,
                    JournalClient.connect(theirs_address) as theirs_client,
                ):
                    for client in (ours_client, theirs_client):  # warm-up
                        await client_appends(client, make_batches(100, 1))
                    ours, theirs = [], []
                    for _ in range(repeats):  # taking turns
                        ours.append(await client_appends(ours_client, make_batches(events, 1)))
                        theirs.append(await client_appends(theirs_client, make_batches(events, 1)))
            figures.append(
                Figure(
                    name=f"journal append, batch 1, {synchronous}, vs raw-sqlite3 gRPC server",
                    unit="events/s",
                    tailrunner=median(ours),
                    baseline=median(theirs),
                    baseline_name="minimal grpc.aio server: raw sqlite3 insert and commit",
                    higher_is_better=True,
                    goal=Goal(on="ratio", op=">=", limit=0.7) if synchronous == "FULL" else None,
                    note=f"{events:,} one-event appends to one aggregate, one call at a time,"
                    f" the same client; the servers take turns, median of {repeats}",
                )
            )
    return figures


def main() -> None:
    if sys.argv[1:2] == ["serve"]:
        parser = argparse.ArgumentParser(prog="python -m bench.append_ceiling serve")
        parser.add_argument("serve")
        parser.add_argument("path")
        parser.add_argument("synchronous", choices=("OFF", "NORMAL", "FULL", "EXTRA"))
        args = parser.parse_args()
        quiet_logs()
        anyio.run(serve, args.path, args.synchronous, backend="asyncio")
        return
    run_module(measure)


if __name__ == "__main__":
    main()
