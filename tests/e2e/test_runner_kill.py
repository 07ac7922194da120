"""A runner killed with SIGKILL, again and again under appends, skips no event.

The plugin writes each event it handles to a file before it checkpoints the
tail (its side effect comes first: at-least-once). After several kills and a
last clean run, every appended event must be in that file; a repeat is
allowed only for an event whose handling a kill interrupted.
"""

from __future__ import annotations

import textwrap
import threading
import uuid
from pathlib import Path

import grpc
import pytest
from ulid import ULID

from tailrunner.proto.v1 import journal_pb2, journal_pb2_grpc

from .conftest import Journal, Runner

pytestmark = pytest.mark.slow

KILLS = 3
PER_ROUND = 40


class Appender:
    """Appends events from a thread while the runner works (and dies)."""

    def __init__(self, address: str, aggregates: list[uuid.UUID]) -> None:
        self._channel = grpc.insecure_channel(address)
        self._stub = journal_pb2_grpc.JournalStub(self._channel)
        self._aggregates = aggregates
        self.appended: list[str] = []
        self._n = 0

    def burst(self, count: int) -> threading.Thread:
        def run() -> None:
            for _ in range(count):
                aggregate = self._aggregates[self._n % len(self._aggregates)]
                self._n += 1
                response = self._stub.Append(
                    journal_pb2.AppendRequest(
                        aggregate_type="e2e",
                        aggregate_id=aggregate.bytes,
                        events=[journal_pb2.NewEvent(type="tick", data=b'{"n": %d}' % self._n)],
                    )
                )
                self.appended.append(str(ULID.from_bytes(response.tail)))

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    def close(self) -> None:
        self._channel.close()


@pytest.fixture(params=["sqlite", "postgres"])
def tails_store(request: pytest.FixtureRequest) -> tuple[str, dict[str, str]]:
    """The tail store URL and the runner's env: a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return "sqlite:///tails.db", {}
    url = request.getfixturevalue("postgres_url")
    schema = request.getfixturevalue("pg_schema")
    return url, {"TAILRUNNER_TAILS__POSTGRES_SCHEMA": schema}


@pytest.mark.parametrize("engine", ["lazy", "eager"])
def test_sigkilled_runner_resumes_and_skips_no_event(
    engine: str,
    tails_store: tuple[str, dict[str, str]],
    plugin_site: Path,
    tmp_path: Path,
) -> None:
    store_url, store_env = tails_store
    journal = Journal(tmp_path / "journal.db")
    record = tmp_path / "handled.txt"
    config = tmp_path / "runner.toml"
    config.write_text(
        textwrap.dedent(
            f"""\
            [journal]
            address = "{journal.address}"

            [engine]
            discovery_interval = "200ms"

            [retry]
            initial = "50ms"
            max_delay = "500ms"

            [tails]
            store = "{store_url}"

            [admin]
            listen = "127.0.0.1:0"

            [metrics]
            listen = "127.0.0.1:0"

            [log]
            format = "json"
            """
        )
    )
    env = {"E2E_RECORD": str(record), **store_env}
    aggregates = [uuid.uuid4() for _ in range(4)]
    journal.start()
    appender = Appender(journal.address, aggregates)
    try:
        for _ in range(KILLS):
            runner = Runner(config, engine, plugin_site, extra_env=env)
            burst = appender.burst(PER_ROUND)
            # Kill it mid-stream: as soon as it handles an event of this round.
            runner.wait_any_recorded()
            runner.kill()
            burst.join()
        burst = appender.burst(PER_ROUND)
        burst.join()
        handled_before = set(record.read_text().split())
        runner = Runner(config, engine, plugin_site, extra_env=env)
        runner.wait_recorded([e for e in appender.appended if e not in handled_before])
        assert runner.stop() == 0
    finally:
        appender.close()
        journal.stop()
    handled = record.read_text().split()
    missing = set(appender.appended) - set(handled)
    assert not missing, f"{len(missing)} events were skipped"
    assert len(handled) >= len(appender.appended)
