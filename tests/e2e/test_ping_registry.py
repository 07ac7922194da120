"""Ping-registry end to end: a journal, three runner processes and the admin's CLI.

Two servers (``ping-pinger``) and the registry daemon (``ping-summarizer``
and ``ping-index-keeper``) each run in a ``tailrunner run`` process of its
own, with its own config and tail store; the admin drives the workflow with
``tailrunner ping-registry``. Under each engine: the pings of both servers
and of the daemon are gathered, the summary comes after the deadline and not
before, commit completes the workflow and delete removes it from the index.
A second test SIGKILLs a server while it posts its pings and restarts it:
nothing is posted twice and nothing is missing.

Bounded for CI: each test waits at most a fixed number of polls of the
journal (a poll takes a few milliseconds), and a few seconds of deadline.
"""

from __future__ import annotations

import json
import signal
import subprocess
import textwrap
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import anyio
import pytest
from ulid import ULID

from tailrunner.journal.client import JournalClient
from tailrunner.model import Event
from tailrunner.workflows.pingregistry.registry import INDEX_TYPE, PingRegistry, index_id
from tailrunner.workflows.pingregistry.state import State

from .conftest import TAILRUNNER, Journal, Runner

pytestmark = pytest.mark.slow

#: Seconds the servers have to answer, counted from the begin (after every
#: runner is up): long enough for a slow machine to discover the workflow.
DEADLINE = 6
#: Polls of the journal before a wait gives up (a poll sleeps 50 ms).
MAX_POLLS = 1200

STARTED = "tailrunner.v1.PingRegistryStarted"
PINGED = "tailrunner.v1.ServerPinged"
GATHERED = "tailrunner.v1.ServerPingsGathered"
COMPLETED = "tailrunner.v1.PingRegistryCompleted"
COMMITTED = "tailrunner.v1.PingRegistryCommitted"


def _config(folder: Path, journal: Journal, engine: str, enabled: list[str], settings: str) -> Path:
    folder.mkdir()
    path = folder / "runner.toml"
    path.write_text(
        textwrap.dedent(
            f"""\
            [journal]
            address = "{journal.address}"

            [engine]
            kind = "{engine}"
            discovery_interval = "200ms"
            interval = "300ms"

            [retry]
            initial = "50ms"
            max_delay = "500ms"

            [activities]
            enabled = {json.dumps(enabled)}

            [tails]
            store = "sqlite:///tails.db"

            [admin]
            listen = "127.0.0.1:0"

            [metrics]
            listen = "127.0.0.1:0"

            [log]
            format = "json"
            """
        )
        + textwrap.dedent(settings)
    )
    return path


def _server(folder: Path, journal: Journal, engine: str, name: str, pings: int) -> Path:
    return _config(
        folder,
        journal,
        engine,
        ["ping-pinger"],
        f"""
        [activities.settings.ping-pinger]
        name = "{name}"
        registries = ["main"]
        pings = {pings}
        message = "{name} is up"
        """,
    )


def _daemon(folder: Path, journal: Journal, engine: str) -> Path:
    return _config(
        folder,
        journal,
        engine,
        ["ping-summarizer", "ping-index-keeper"],
        """
        [activities.settings.ping-summarizer]
        name = "registry-daemon"
        registries = ["main"]
        pings = 1
        """,
    )


@contextmanager
def _running(config: Path, engine: str, plugin_site: Path) -> Iterator[Runner]:
    """A runner process, its output drained by a thread (a full pipe would stall it)."""
    with _supervised(config, Runner(config, engine, plugin_site)) as runner:
        yield runner


def _all_running(
    stack: ExitStack, configs: list[Path], engine: str, plugin_site: Path
) -> list[Runner]:
    """Runners for ``configs``, started together (their start-ups overlap), stopped by ``stack``."""
    spawned = [Runner(config, engine, plugin_site) for config in configs]
    for runner in spawned:
        # Until its own context takes over: none is left behind if another fails to start.
        stack.callback(_kill_if_running, runner)
    return [
        stack.enter_context(_supervised(config, runner))
        for config, runner in zip(configs, spawned, strict=True)
    ]


@contextmanager
def _supervised(config: Path, runner: Runner) -> Iterator[Runner]:
    """Wait until ``runner`` started; drain its output; on exit, stop it and check its exit."""
    runner.wait_started()
    last: deque[object] = deque(maxlen=50)
    drain = threading.Thread(target=lambda: last.extend(runner.lines()), daemon=True)
    drain.start()
    try:
        yield runner
    finally:
        if runner.proc.poll() is None:
            runner.proc.send_signal(signal.SIGTERM)
        code = runner.proc.wait(timeout=30)
        drain.join(timeout=30)
        assert runner.proc.stdout is not None
        runner.proc.stdout.close()
        if not getattr(runner, "killed", False):
            assert code == 0, f"runner {config.parent.name} exited {code}: {list(last)[-5:]}"


def _kill(runner: Runner) -> None:
    """SIGKILL: no chance to save a tail or say goodbye."""
    runner.killed = True  # type: ignore[attr-defined]
    runner.proc.kill()
    runner.proc.wait(timeout=30)


def _kill_if_running(runner: Runner) -> None:
    if runner.proc.poll() is None:
        _kill(runner)


def _admin(journal: Journal, *args: str) -> str:
    done = subprocess.run(
        [TAILRUNNER, "ping-registry", *args, "--journal", journal.address],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, f"ping-registry {' '.join(args)}: {done.stderr}"
    return done.stdout.strip()


def _show(journal: Journal, workflow: UUID) -> State:
    async def show() -> State:
        async with JournalClient.connect(journal.address) as client:
            return await PingRegistry(client).show(workflow)

    return anyio.run(show)


def _events(journal: Journal, aggregate: UUID) -> list[Event]:
    async def read() -> list[Event]:
        async with JournalClient.connect(journal.address) as client:
            return [e async for batch in client.events(aggregate) for e in batch.events]

    return anyio.run(read)


def _poll(journal: Journal, workflow: UUID, until: Callable[[State], bool], what: str) -> State:
    for _ in range(MAX_POLLS):
        state = _show(journal, workflow)
        if until(state):
            return state
        time.sleep(0.05)
    raise AssertionError(f"{what}: not after {MAX_POLLS} polls; the workflow is {state}")


def _deadline_of(state: State) -> datetime:
    assert state.deadline is not None
    return state.deadline


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    journal = Journal(tmp_path / "journal.db")
    journal.start()
    yield journal
    journal.stop()


@pytest.mark.parametrize("engine", ["lazy", "eager", "cron"])
def test_pings_of_both_servers_are_gathered_summarized_after_the_deadline_committed_and_deleted(
    engine: str, journal: Journal, tmp_path: Path
) -> None:
    configs = [
        _server(tmp_path / "server-a", journal, engine, "server-a", pings=2),
        _server(tmp_path / "server-b", journal, engine, "server-b", pings=1),
        _daemon(tmp_path / "daemon", journal, engine),
    ]
    with ExitStack() as stack:
        _all_running(stack, configs, engine, tmp_path)
        elsewhere = UUID(_admin(journal, "begin", "--registry", "other", "--deadline", "1s"))
        workflow = UUID(
            _admin(journal, "begin", "--registry", "main", "--deadline", f"{DEADLINE}s")
        )

        # Every ping arrives before the deadline, and no summary does.
        state = _poll(journal, workflow, lambda s: len(s.pings) == 4, "four pings")
        assert datetime.now(UTC) < _deadline_of(state), "the pings took the whole deadline"
        assert state.summary is None
        assert Counter(p.pinger for p in state.pings) == {
            "server-a": 2,
            "server-b": 1,
            "registry-daemon": 1,
        }

        state = _poll(journal, workflow, lambda s: s.summary is not None, "the summary")
        assert state.summary is not None and state.summary.code == 0
        assert state.summary.event_id.datetime >= _deadline_of(state).replace(microsecond=0)
        assert [p.event_id for p in state.summary.pings] == [p.event_id for p in state.pings]
        shown = json.loads(_admin(journal, "show", str(workflow), "--json"))
        assert (shown["state"], shown["summary"]["pings"]) == ("summarized", 4)

        assert _admin(journal, "commit", str(workflow)) == f"{workflow}\tterminated"
        listed = _admin(journal, "list", "--registry", "main")
        assert listed.split("\t")[:2] == [str(workflow), "completed"]
        assert _admin(journal, "delete", str(workflow)) == f"{workflow}\tdeleted"
        assert _admin(journal, "list", "--registry", "main") == ""

        # The other registry's workflow is nobody's here: no server pinged it.
        assert _show(journal, elsewhere).pings == ()

    types = Counter(e.type for e in _events(journal, workflow))
    assert types == {STARTED: 1, PINGED: 4, GATHERED: 1, COMPLETED: 1, COMMITTED: 1}
    index = Counter(e.type for e in _events(journal, index_id("main")))
    assert index == {
        "tailrunner.v1.IndexWorkflowStarted": 1,
        "tailrunner.v1.IndexWorkflowCompleted": 1,
        "tailrunner.v1.IndexWorkflowDeleted": 1,
    }
    assert all(e.aggregate_type == INDEX_TYPE for e in _events(journal, index_id("main")))


def test_a_server_killed_while_it_pings_and_restarted_posts_nothing_twice_and_misses_nothing(
    journal: Journal, tmp_path: Path
) -> None:
    engine = "lazy"
    pings = 300
    server_a = _server(tmp_path / "server-a", journal, engine, "server-a", pings=pings)
    server_b = _server(tmp_path / "server-b", journal, engine, "server-b", pings=1)
    daemon = _daemon(tmp_path / "daemon", journal, engine)
    with ExitStack() as stack:
        *_, victim = _all_running(stack, [server_b, daemon, server_a], engine, tmp_path)
        # Long enough for the restart as well as the pings.
        workflow = UUID(_admin(journal, "begin", "--registry", "main", "--deadline", "12s"))

        state = _poll(
            journal, workflow, lambda s: s.pings_by("server-a") >= 10, "server-a's first pings"
        )
        _kill(victim)
        at_kill = _show(journal, workflow).pings_by("server-a")
        assert at_kill < pings, "the kill came after server-a had posted every ping"

        stack.enter_context(_running(server_a, engine, tmp_path))
        state = _poll(journal, workflow, lambda s: s.summary is not None, "the summary")

    assert state.summary is not None and state.summary.code == 0
    by_pinger = Counter(p.pinger for p in state.pings)
    assert by_pinger == {"server-a": pings, "server-b": 1, "registry-daemon": 1}
    assert len(state.summary.pings) == pings + 2
    ids = [p.event_id for p in state.pings]
    assert len(set(ids)) == len(ids)
    assert all(isinstance(i, ULID) for i in ids)
