"""A runner whose journal token stops working (the tokens file was changed) logs the
outage once per call, as for a journal that went away, and recovers when the token works."""

from __future__ import annotations

import anyio
import structlog
from ulid import ULID

from tailrunner import EOF, ActivityContext, EventStream, Outcome, activity
from tailrunner.engines.options import EngineOptions
from tailrunner.journal.client import JournalClient
from tailrunner.journal.memory import MemoryJournalStore
from tailrunner.journal.server import JournalServer
from tailrunner.reconnect import ReconnectPolicy
from tailrunner.runner import Runner
from tailrunner.security import Role, ServerSecurity, Tokens
from tailrunner.tails.memory import MemoryTailStore

from .conftest import UNKNOWN_TOKEN, WRITE_TOKEN


@activity(name="idle", aggregate_types=["t"])
async def _idle(ctx: ActivityContext, tail: ULID | None, stream: EventStream) -> Outcome:
    return EOF(tail)


async def test_a_token_the_journal_does_not_know_is_an_outage_logged_once() -> None:
    security = ServerSecurity(tokens=Tokens({WRITE_TOKEN: Role.WRITE}))
    fast = ReconnectPolicy(initial=0.01, max_delay=0.02)
    with structlog.testing.capture_logs() as logs:
        async with (
            JournalServer(MemoryJournalStore(), listen="127.0.0.1:0", security=security) as server,
            JournalClient.connect(server.address, token=UNKNOWN_TOKEN, reconnect=fast) as journal,
        ):
            runner = Runner(
                journal=journal,
                tails=MemoryTailStore(),
                activities=[_idle],
                options=EngineOptions(kind="lazy", reconnect=fast),
            )
            async with anyio.create_task_group() as tg:
                await tg.start(runner.run)
                with anyio.fail_after(30):  # bounds a hang only
                    # Polls the captured log: there is no event to wait on.
                    while not any(e.get("call") == "AggregateSignals" for e in logs):  # noqa: ASYNC110
                        await anyio.sleep(0.05)
                    # Many more tries at this backoff; none may log a traceback.
                    await anyio.sleep(0.5)
                tg.cancel_scope.cancel()

    assert not [e for e in logs if e["event"] == "signal handling failed"]
    outage = [
        e for e in logs if e.get("call") == "AggregateSignals" and e["log_level"] == "warning"
    ]
    assert len(outage) == 1, outage
    assert "not known here" in str(outage[0])
    assert UNKNOWN_TOKEN not in repr(logs)
