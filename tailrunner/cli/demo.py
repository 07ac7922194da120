"""``tailrunner demo``: an embedded SQLite journal and a runner in one process."""

from __future__ import annotations

import json
import tempfile
import uuid
from pathlib import Path

import anyio
import click
import structlog

from tailrunner.activities.builtin import DEMO_TYPE, counter
from tailrunner.engines.factory import EngineOptions
from tailrunner.engines.kinds import ENGINE_KINDS, EngineKind
from tailrunner.engines.retry import RetryPolicy
from tailrunner.journal.client import JournalClient
from tailrunner.journal.open import open_store
from tailrunner.journal.server import JournalServer
from tailrunner.model import AggregateRef, NewEvent
from tailrunner.runner import Runner
from tailrunner.tails.memory import MemoryTailStore
from tailrunner.tails.store import TailStore

log = structlog.get_logger(__name__)


@click.command("demo")
@click.option(
    "--engine",
    type=click.Choice(ENGINE_KINDS),
    default="lazy",
    show_default=True,
    help="Which engine runs the demo's counter activity.",
)
@click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Keep the journal in this SQLite file (default: a temporary one, removed at exit).",
)
@click.option(
    "--log-format",
    type=click.Choice(["auto", "console", "json"]),
    default="auto",
    show_default=True,
)
def demo(engine: EngineKind, db: Path | None, log_format: str) -> None:
    """Show tailrunner at work, with nothing to set up.

    Starts a SQLite journal on 127.0.0.1 and a runner with the built-in
    ``counter`` activity in this process; appends events to two ``demo``
    aggregates (found by listing), then more to one of them and a first
    event to a third (found by the journal's signal, or by re-listing), and
    shows the counter processing each event. Ends when every event is counted.

    \b
    Examples:
      tailrunner demo
      tailrunner demo --engine eager
      tailrunner demo --engine cron --db demo.db
    """
    from tailrunner.logs import configure_logging

    configure_logging(log_format, "info")
    with tempfile.TemporaryDirectory(prefix="tailrunner-demo-") as tmp:
        path = db or Path(tmp) / "journal.db"
        summary = anyio.run(_demo, engine, path)
    click.echo(json.dumps(summary) if log_format == "json" else _summary_text(summary))


async def _demo(engine: EngineKind, path: Path) -> dict[str, object]:
    store = await open_store(f"sqlite:///{path}")
    tails = MemoryTailStore()
    first = [AggregateRef(type=DEMO_TYPE, id=uuid.uuid4()) for _ in range(2)]
    later = AggregateRef(type=DEMO_TYPE, id=uuid.uuid4())
    async with (
        JournalServer(store, listen="127.0.0.1:0", close_store=True) as server,
        JournalClient.connect(server.address) as client,
    ):
        log.info("journal serving", address=server.address, store=str(path))
        appended = 0
        for n, aggregate in enumerate(first):
            appended += len(
                (await client.append(aggregate, [_event(n, i) for i in range(3)])).event_ids
            )
        runner = Runner(
            journal=client,
            tails=tails,
            activities=[counter],
            options=EngineOptions(
                kind=engine,
                capacity=10,
                interval=0.2,
                retry=RetryPolicy(initial=0.1, max_delay=2.0),
                discovery_interval=0.5,
            ),
        )
        async with anyio.create_task_group() as tg:
            await tg.start(runner.run)
            await _wait_counted(client, tails, first)
            appended += len((await client.append(first[0], [_event(0, 3), _event(0, 4)])).event_ids)
            appended += len((await client.append(later, [_event(2, 0)])).event_ids)
            await _wait_counted(client, tails, [*first, later])
            tg.cancel_scope.cancel()
    return {
        "engine": engine,
        "aggregates": len(first) + 1,
        "events": appended,
        "journal": str(path),
    }


def _event(aggregate: int, n: int) -> NewEvent:
    return NewEvent(type="hello", data=json.dumps({"aggregate": aggregate, "n": n}).encode())


async def _wait_counted(
    client: JournalClient, tails: TailStore, aggregates: list[AggregateRef]
) -> None:
    """Wait until the counter's stored tail is each aggregate's head."""
    heads = {}
    for aggregate in aggregates:
        async for info in client.aggregates(DEMO_TYPE):
            if info.id == aggregate.id:
                heads[aggregate.id] = info.head
    with anyio.fail_after(30):
        while True:
            stored = await tails.load(counter.name)
            if all(
                aggregate.id in stored and stored[aggregate.id].tail == heads[aggregate.id]
                for aggregate in aggregates
            ):
                return
            # A demo may poll its own in-memory store; the engines never poll.
            await anyio.sleep(0.05)


def _summary_text(summary: dict[str, object]) -> str:
    return (
        f"demo done: the counter activity handled {summary['events']} events of"
        f" {summary['aggregates']} aggregates under the {summary['engine']} engine"
        f" (journal: {summary['journal']})"
    )


COMMANDS: list[click.Command] = [demo]
