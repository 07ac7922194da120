"""Project-wide fixtures."""

from __future__ import annotations

import asyncio
import os
import traceback
import uuid
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest
from psycopg import sql

from tailrunner.stores import redact


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """grpc.aio runs on asyncio only."""
    return "asyncio"


@pytest.fixture(scope="session", autouse=True)
async def _one_event_loop(anyio_backend: str) -> AsyncIterator[None]:
    """Keep one event loop for the whole session.

    grpc.aio's completion-queue poller is process-wide: a loop closed between
    tests while it still holds completions for that loop's calls makes it
    raise "Event loop is closed" into the next test's loop. Holding the
    anyio test runner open for the session gives every test the same loop.

    Tests that run a CLI command in a worker thread give it a loop of its
    own, closed when the command ends; a late completion of that loop's
    calls (a channel's close) then reaches the poller after the loop closed,
    which reports it on this loop. It belongs to no test and nothing waits
    for it: that one error is dropped, every other one still fails its test.
    """
    loop = asyncio.get_running_loop()
    report = loop.get_exception_handler()

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        error = context.get("exception")
        if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
            frames = traceback.extract_tb(error.__traceback__)
            if any(frame.name.endswith("_handle_events") for frame in frames):
                return
        if report is None:
            loop.default_exception_handler(context)
        else:
            report(loop, context)

    loop.set_exception_handler(handle)
    yield


DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test server's URL (env ``TAILRUNNER_TEST_POSTGRES``), checked to answer.

    The one place where the PostgreSQL tests may stop: unreachable is a
    failure under ``CI=true`` (those tests must run there) and a skip with
    the reason elsewhere. Never a silent skip.
    """
    url = os.environ.get("TAILRUNNER_TEST_POSTGRES", DEFAULT_POSTGRES)
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        reason = " ".join(str(exc).split())
        message = f"PostgreSQL at {redact(url)} is unreachable: {reason}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} (CI=true: the PostgreSQL tests must run)")
        pytest.skip(f"{message} (set TAILRUNNER_TEST_POSTGRES to test against another server)")
    return url


@pytest.fixture
def pg_schema(postgres_url: str) -> Iterator[str]:
    """A schema name no other test uses; the schema is dropped after the test."""
    schema = f"tailrunner_test_{uuid.uuid4().hex[:12]}"
    yield schema
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
