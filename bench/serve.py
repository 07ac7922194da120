"""Servers in their own process, as in production: ``python -m bench.serve KIND …``.

``journal --store URL [--operations]``: tailrunner's :class:`JournalServer`
over the store ``URL`` names (with ``google.longrunning.Operations``).
``baseline [--store URL --aggregate UUID --batch N]``: the minimal server
of :mod:`bench.baseline_server`, its ``Events`` messages built from the
aggregate's events in ``URL`` (read once at start).

Each prints ``{"address": "127.0.0.1:PORT"}`` on one line once it serves,
and stops when its standard input closes.
"""

from __future__ import annotations

import argparse
import sys
import uuid

import anyio

from bench.baseline_server import build_responses, start_baseline
from bench.common import Reporter, quiet_logs
from tailrunner.journal.open import open_store
from tailrunner.journal.server import JournalServer
from tailrunner.operations.service import operations_service
from tailrunner.proto.v1 import journal_pb2


async def serve_journal(store_url: str, max_pending: int, operations: bool) -> None:
    store = await open_store(store_url)
    async with JournalServer(
        store,
        listen="127.0.0.1:0",
        close_store=True,
        max_pending_signals=max_pending,
        services=[operations_service()] if operations else [],
    ) as server:
        await _serve_until_stdin_closes(server.address)


async def serve_baseline(store_url: str | None, aggregate: str | None, batch: int) -> None:
    prebuilt: dict[bytes, list[journal_pb2.EventsResponse]] = {}
    if store_url is not None and aggregate is not None:
        store = await open_store(store_url)
        try:
            aggregate_id = uuid.UUID(aggregate)
            events = await store.read(aggregate_id, after=None, limit=10**9)
        finally:
            await store.aclose()
        prebuilt[aggregate_id.bytes] = build_responses(events, batch=batch)
    server, address = await start_baseline(prebuilt)
    try:
        await _serve_until_stdin_closes(address)
    finally:
        with anyio.CancelScope(shield=True):
            await server.stop(None)


async def _serve_until_stdin_closes(address: str) -> None:
    reporter = Reporter()
    reporter.send(address=address)
    try:
        while True:
            await reporter.receive()
    except EOFError:
        return


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serve")
    sub = parser.add_subparsers(dest="kind", required=True)
    journal = sub.add_parser("journal")
    journal.add_argument("--store", required=True)
    journal.add_argument("--max-pending", type=int, default=10_000)
    journal.add_argument("--operations", action="store_true", help="serve Operations too")
    baseline = sub.add_parser("baseline")
    baseline.add_argument("--store")
    baseline.add_argument("--aggregate")
    baseline.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    quiet_logs()
    if args.kind == "journal":
        anyio.run(serve_journal, args.store, args.max_pending, args.operations, backend="asyncio")
    else:
        anyio.run(serve_baseline, args.store, args.aggregate, args.batch, backend="asyncio")
    sys.exit(0)


if __name__ == "__main__":
    main()
