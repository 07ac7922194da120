"""A cluster on one PostgreSQL: two journal servers, three runners, one killed, one paused.

Real processes: ``tailrunner journal serve`` twice on one journal schema,
``tailrunner run`` three times with ``[scaleout]`` on one tail schema, and a
pip-installed plugin whose activity writes each event's effect inside the
tail store's transaction (the effect commits with the tail, or not at all).
Appends go to both journal servers in turn, over 500 aggregates.

The story, once per engine (lazy, eager):

1. the three runners share the 64 segments; a round of appends is handled;
2. during the next round one runner is SIGKILLed: its segments are owned
   again within lease + 5 s (database clock) and the round completes;
3. another runner is SIGSTOPped past its lease (a zombie), a round is
   handled without it, then it is SIGCONTed: it must notice it lost its
   leases, write nothing under them, and rejoin. It is paused at a moment
   none of its PostgreSQL sessions is in a statement (see
   :func:`pause_between_statements`);
4. a last round with the two survivors.

Then: every appended event's effect is there exactly once; no two runs of
a task by different leases overlap in time (from the run records, which
carry owner and epoch); the zombie wrote no run under its old epochs after
it was resumed, and counted its lost segments.

This is the bounded CI version: one kill, one pause, four rounds of 500
events; it stops by itself within a few minutes at most. The lease (6 s)
is long enough for the runners to keep their segments while another job
starves the CPUs; every wait is bounded in leases.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import grpc
import psutil
import psycopg
import pytest
from psycopg import sql

from tailrunner.proto.v1 import journal_pb2, journal_pb2_grpc
from tailrunner.scaleout.segments import segment_of

from .conftest import TAILRUNNER, _free_port, build_plugin

pytestmark = pytest.mark.slow

CLUSTER_CONFIG = Path(__file__).parent.parent.parent / "config" / "postgres.toml"
AGGREGATES = 500
SEGMENTS = 64
#: Seconds a lease lasts. A runner renews every third of it and drops a
#: segment locally two thirds after the last renewal was sent, so its event
#: loop may stall for a third of it (2 s) before it gives up its own
#: segments: 3 s leases flapped when another job starved the CPUs.
LEASE = 6.0
#: Every wait for the cluster is bounded by this (seconds): a hang fails.
#: The waits are lease expiries and hand-overs: counted in leases.
PATIENCE = 30 * LEASE
#: Appends in flight during a round (each aggregate gets one event per round,
#: so their order within an aggregate is the rounds' order).
WRITERS = 8
#: Pauses tried before giving up on finding the zombie between statements.
PAUSE_TRIES = 30

EFFECTS_HOOKS = '''\
"""Writes each event's effect in the tail store's transaction: exactly once."""

import os

from psycopg import sql

from tailrunner import EOF, activity
from tailrunner.plugins import hookimpl

TABLE = sql.Identifier(*os.environ["E2E_EFFECTS"].split("."))
INSERT = sql.SQL("INSERT INTO {} (aggregate_id, event_id, pid) VALUES (%s, %s, %s)").format(TABLE)


@activity(name="effects", aggregate_types=["e2e"], auto_checkpoint=False)
async def effects(ctx, tail, stream):
    async for batch in stream.batches():
        if batch.events:
            last = batch.events[-1].id
            async with ctx.transaction(last) as conn:
                async with conn.cursor() as cursor:
                    await cursor.executemany(
                        INSERT,
                        [(e.aggregate_id, e.id.bytes, os.getpid()) for e in batch.events],
                    )
            tail = last
        if batch.will_block and ctx.engine != "eager":
            break  # lazy: caught up; eager: keep watching
    return EOF(tail)


@hookimpl
def tailrunner_activities():
    return [effects]
'''


@pytest.fixture(scope="module")
def effects_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_plugin(
        tmp_path_factory,
        project="e2e-effects",
        package="e2e_effects",
        hooks=EFFECTS_HOOKS,
        plugin="e2e-effects",
    )


def wait_for(what: str, check: Callable[[], bool], timeout: float = PATIENCE) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class Process:
    """A tailrunner subprocess whose output goes to a file (never a pipe that could fill)."""

    def __init__(self, name: str, args: list[str], log: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log = log
        self._out = log.open("w")
        self._terminated = False
        self.proc = subprocess.Popen(
            [TAILRUNNER, *args], stdout=self._out, stderr=subprocess.STDOUT, text=True, env=env
        )

    def text(self) -> str:
        return self.log.read_text()

    def wait_line(self, pattern: str) -> re.Match[str]:
        found: list[re.Match[str]] = []

        def seen() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited ({self.proc.returncode}):\n{self.tail()}")
            match = re.search(pattern, self.text(), re.MULTILINE)
            if match:
                found.append(match)
            return bool(found)

        wait_for(f"{self.name} to print {pattern!r}", seen, timeout=60)
        return found[0]

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def terminate(self) -> None:
        """SIGTERM once, without waiting (:meth:`stop` waits)."""
        if self.proc.poll() is None and not self._terminated:
            self._terminated = True
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._out.close()
        return self.proc.returncode

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


@dataclass
class RunnerProc:
    process: Process
    incarnation: str
    metrics: str
    pid: int
    admin: str


class Cluster:
    def __init__(self, url: str, tmp: Path, engine: str, site: Path) -> None:
        self.url = url
        self.tmp = tmp
        self.engine = engine
        self.site = site
        tag = uuid.uuid4().hex[:10]
        self.journal_schema = f"tailrunner_e2e_j_{tag}"
        self.tails_schema = f"tailrunner_e2e_t_{tag}"
        self.processes: list[Process] = []
        self.journals: list[str] = []

    # -- set-up

    def prepare(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.tails_schema)))
            conn.execute(
                sql.SQL(
                    "CREATE TABLE {} (aggregate_id uuid NOT NULL, event_id bytea NOT NULL,"
                    " pid integer NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())"
                ).format(sql.Identifier(self.tails_schema, "effects"))
            )
        store = f"{self.url}?schema={self.journal_schema}"
        subprocess.run([TAILRUNNER, "journal", "migrate", "--store", store], check=True)

    def start_journals(self, names: list[str]) -> list[str]:
        """Journal servers on the journal schema, started together; their addresses."""
        started: list[tuple[Process, str]] = []
        for name in names:
            address = f"127.0.0.1:{_free_port()}"
            store = f"{self.url}?schema={self.journal_schema}"
            process = Process(
                name,
                ["journal", "serve", "--listen", address, "--store", store],
                self.tmp / f"{name}.log",
                dict(os.environ),
            )
            self.processes.append(process)
            started.append((process, address))
        for process, address in started:
            process.wait_line(r"^listening on")
            self.journals.append(address)
        return [address for _, address in started]

    def start_runners(self, specs: list[tuple[str, str]]) -> list[RunnerProc]:
        """Runners ``(name, journal address)``, started together (their start-ups overlap)."""
        processes = [self._spawn_runner(name, journal) for name, journal in specs]
        return [self._started(process) for process in processes]

    def _spawn_runner(self, name: str, journal: str) -> Process:
        """A runner on the documented starting point, ``config/postgres.toml``.

        The environment overrides what a test needs otherwise: its database
        and schemas, a short lease, fast retries, the plugin's activity only.
        """
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(self.site), env.get("PYTHONPATH", "")])
        env["E2E_EFFECTS"] = f"{self.tails_schema}.effects"
        env.update(
            {
                "TAILRUNNER_JOURNAL__ADDRESS": journal,
                "TAILRUNNER_ENGINE__KIND": self.engine,
                "TAILRUNNER_ENGINE__CAPACITY": "2000",
                "TAILRUNNER_ENGINE__DISCOVERY_INTERVAL": "2s",
                "TAILRUNNER_ENGINE__BACKSTOP": "10s",
                "TAILRUNNER_ENGINE__SHUTDOWN_GRACE": "3s",
                "TAILRUNNER_RETRY__INITIAL": "100ms",
                "TAILRUNNER_RETRY__MAX_DELAY": "1s",
                "TAILRUNNER_ACTIVITIES__ENABLED": '["effects"]',
                "TAILRUNNER_TAILS__STORE": self.url,
                "TAILRUNNER_TAILS__POSTGRES_SCHEMA": self.tails_schema,
                "TAILRUNNER_LOG__FORMAT": "json",
                "TAILRUNNER_SCALEOUT__SEGMENTS": str(SEGMENTS),
                "TAILRUNNER_SCALEOUT__LEASE": f"{LEASE}s",
            }
        )
        process = Process(
            name, ["run", "--config", str(CLUSTER_CONFIG)], self.tmp / f"{name}.log", env
        )
        self.processes.append(process)
        return process

    def _started(self, process: Process) -> RunnerProc:
        admin = process.wait_line(r"^admin on (\S+)").group(1)
        metrics = process.wait_line(r"^metrics on (\S+)").group(1)
        running = process.wait_line(r'^\{.*"event": "running".*\}$')
        incarnation = json.loads(running.group(0))["incarnation"]
        return RunnerProc(process, incarnation, metrics, process.proc.pid, admin)

    def stop_all(self) -> None:
        """SIGTERM to every runner at once (they hand over together), then the journals."""
        runners = [p for p in self.processes if p.name.startswith("runner")]
        for process in runners:
            process.terminate()
        for process in reversed(self.processes):
            process.stop()

    def drop(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            for schema in (self.journal_schema, self.tails_schema):
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
                )

    # -- what the database says

    def query(self, text: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            query = sql.SQL(text).format(schema=sql.Identifier(self.tails_schema))
            return conn.execute(query, params).fetchall()

    def now(self) -> datetime:
        (row,) = self.query("SELECT now()")
        value = row[0]
        assert isinstance(value, datetime)
        return value

    def owners(self) -> dict[int, tuple[str, int, datetime]]:
        """The live leases: segment → (owner, epoch, acquired_at)."""
        rows = self.query(
            "SELECT segment, owner, epoch, acquired_at FROM {schema}.segment_leases"
            " WHERE owner IS NOT NULL AND expires_at > now()"
        )
        return {int(s): (str(o), int(e), a) for s, o, e, a in rows}  # type: ignore[call-overload, misc]

    def effects(self) -> Counter[bytes]:
        rows = self.query("SELECT event_id FROM {schema}.effects")
        return Counter(bytes(row[0]) for row in rows)  # type: ignore[arg-type]

    def wait_effects(self, appended: list[bytes]) -> None:
        wanted = set(appended)
        wait_for(
            f"the effects of {len(wanted)} events",
            lambda: wanted <= set(self.effects()),
        )

    def wait_shared_by(self, runners: list[RunnerProc]) -> dict[int, tuple[str, int, datetime]]:
        """Until every segment is live, owned only by ``runners``, each holding some."""
        names = {r.incarnation for r in runners}
        result: list[dict[int, tuple[str, int, datetime]]] = []
        last: list[str] = []

        def shared() -> bool:
            owners = self.owners()
            held = Counter(owner for owner, _, _ in owners.values())
            if len(owners) == SEGMENTS and set(held) == names:
                result.append(owners)
                return True
            free = sorted(set(range(SEGMENTS)) - set(owners))
            last[:] = [f"live leases by owner {dict(held)}, not live: segments {free}"]
            return False

        try:
            wait_for(f"the segments shared by {len(runners)} runners", shared)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last seen: {last}") from None
        return result[-1]

    def busy_sessions(self, pid: int) -> list[tuple[int, str]]:
        """The PostgreSQL sessions of process ``pid`` that are not idle: (client port, state).

        Found by the client ports of its TCP connections to the server.
        """
        server_port = urllib.parse.urlsplit(self.url).port or 5432
        ports = [
            c.laddr.port
            for c in psutil.Process(pid).net_connections(kind="tcp")
            if c.raddr and c.raddr.port == server_port
        ]
        rows = self.query(
            "SELECT client_port, state FROM pg_stat_activity WHERE client_port = ANY(%s)",
            (ports,),
        )
        assert rows, f"no PostgreSQL session found for pid {pid} (ports {ports})"
        return [(int(port), str(state)) for port, state in rows if state != "idle"]  # type: ignore[call-overload]


class Appender:
    """Appends one event per aggregate per round, to the journal servers in turn."""

    def __init__(self, addresses: list[str]) -> None:
        self.channels = [grpc.insecure_channel(address) for address in addresses]
        self.stubs = [journal_pb2_grpc.JournalStub(channel) for channel in self.channels]
        self.aggregates = [uuid.uuid4() for _ in range(AGGREGATES)]
        self.appended: list[bytes] = []
        self._turn = itertools.count()

    def round(self, halfway: threading.Event | None = None) -> None:
        """One event per aggregate, ``WRITERS`` appends in flight; ``halfway`` set at half."""
        done = itertools.count(1)

        def append(turn: int, aggregate: uuid.UUID) -> bytes:
            response = self.stubs[turn % len(self.stubs)].Append(
                journal_pb2.AppendRequest(
                    aggregate_type="e2e",
                    aggregate_id=aggregate.bytes,
                    events=[journal_pb2.NewEvent(type="tick", data=b"{}")],
                ),
                timeout=30,
            )
            if halfway is not None and next(done) == AGGREGATES // 2:
                halfway.set()
            return response.tail

        turns = [next(self._turn) for _ in self.aggregates]
        with ThreadPoolExecutor(max_workers=WRITERS) as pool:
            self.appended.extend(pool.map(append, turns, self.aggregates))

    def in_background(self) -> tuple[threading.Thread, threading.Event]:
        halfway = threading.Event()
        thread = threading.Thread(target=self.round, args=(halfway,))
        thread.start()
        return thread, halfway

    def close(self) -> None:
        for channel in self.channels:
            channel.close()


def metric(runner: RunnerProc, name: str) -> float:
    with urllib.request.urlopen(runner.metrics, timeout=10) as response:
        text = response.read().decode()
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in {runner.metrics}"
    return float(match.group(1))


def pause_between_statements(cluster: Cluster, runner: RunnerProc) -> int:
    """SIGSTOP ``runner`` at a moment none of its PostgreSQL sessions is busy; the tries it took.

    A runner stopped inside a pipelined fenced write, before the pipeline's
    Sync, keeps the lease row locked FOR SHARE in a session PostgreSQL counts
    as active, so ``idle_in_transaction_session_timeout`` (the fence's hold
    limit) never ends it, and no one can claim that segment until the runner
    resumes: a product defect, reported, not what this test is about. So it
    is stopped, its statements in flight may finish, and its sessions are
    looked at while it cannot move; if one is still busy, it is resumed for
    a moment and stopped again.
    """
    for attempt in range(1, PAUSE_TRIES + 1):
        runner.process.signal(signal.SIGSTOP)
        settle = time.monotonic() + 1.0
        while busy := cluster.busy_sessions(runner.pid):
            if time.monotonic() > settle:
                break
            time.sleep(0.05)
        if not busy:
            return attempt
        runner.process.signal(signal.SIGCONT)
        time.sleep(0.2)
    raise AssertionError(f"{runner.process.name} was busy at {PAUSE_TRIES} pauses: {busy}")


def check_status_shows_the_cluster(asked: RunnerProc, runners: list[RunnerProc]) -> None:
    """``tailrunner status --json`` names every runner with the segments it holds."""
    out = subprocess.run(
        [TAILRUNNER, "status", "--admin", asked.admin, "--json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    (line,) = [line for line in out.splitlines() if line.startswith('{"cluster"')]
    view = json.loads(line)["cluster"]
    assert view["incarnation"] == asked.incarnation
    held = {row["segment"]: row["owner"] for row in view["segments"] if row["live"]}
    assert len(held) == SEGMENTS and set(held.values()) == {r.incarnation for r in runners}


def check_no_overlapping_runs(cluster: Cluster) -> int:
    """No two runs of one task under different leases overlap; the runs checked."""
    rows = cluster.query(
        "SELECT activity, aggregate_id, owner, epoch, started_at, finished_at"
        " FROM {schema}.tail_runs ORDER BY activity, aggregate_id, started_at"
    )
    assert all(row[2] is not None and row[3] is not None for row in rows), "runs carry the lease"
    for _, runs in itertools.groupby(rows, key=lambda row: (row[0], row[1])):
        ordered = list(runs)
        for earlier, later in itertools.pairwise(ordered):
            if (earlier[2], earlier[3]) != (later[2], later[3]):
                assert earlier[5] <= later[4], f"runs overlap: {earlier} and {later}"  # type: ignore[operator]
    return len(rows)


@pytest.mark.parametrize("engine", ["lazy", "eager"])
def test_a_cluster_survives_a_killed_and_a_paused_runner(
    engine: str, effects_site: Path, postgres_url: str, tmp_path: Path
) -> None:
    cluster = Cluster(postgres_url, tmp_path, engine, effects_site)
    appender: Appender | None = None
    try:
        cluster.prepare()
        a, b = cluster.start_journals(["journal-a", "journal-b"])
        killed, zombie, survivor = cluster.start_runners(
            [("runner-1", a), ("runner-2", b), ("runner-3", a)]
        )
        appender = Appender([a, b])

        # 1. Shared three ways; a round handled.
        cluster.wait_shared_by([killed, zombie, survivor])
        appender.round()
        cluster.wait_effects(appender.appended)
        check_status_shows_the_cluster(survivor, [killed, zombie, survivor])

        # 2. SIGKILL mid-round: its segments are owned again within lease + 5 s.
        thread, halfway = appender.in_background()
        assert halfway.wait(60)
        before = cluster.owners()
        its = {s for s, (owner, _, _) in before.items() if owner == killed.incarnation}
        assert its, "the killed runner held segments"
        killed_at = cluster.now()
        killed.process.kill()
        thread.join(PATIENCE)
        assert not thread.is_alive(), "the round of appends did not end"
        after = cluster.wait_shared_by([zombie, survivor])
        taken = max(after[s][2] for s in its)
        moved = (taken - killed_at).total_seconds()
        print(f"{engine}: the killed runner's {len(its)} segments owned again after {moved:.2f} s")
        assert moved <= LEASE + 5, (killed_at, taken)
        cluster.wait_effects(appender.appended)

        # 3. SIGSTOP past the lease: the survivor takes everything; SIGCONT.
        tries = pause_between_statements(cluster, zombie)
        print(f"{engine}: the zombie paused between statements at try {tries}")
        try:
            held = {
                s: epoch
                for s, (owner, epoch, _) in cluster.owners().items()
                if owner == zombie.incarnation
            }
            assert held, "the zombie held segments"
            thread, _ = appender.in_background()
            cluster.wait_shared_by([survivor])
            thread.join(PATIENCE)
            assert not thread.is_alive(), "the round of appends did not end"
            cluster.wait_effects(appender.appended)
        finally:
            resumed_at = cluster.now()
            zombie.process.signal(signal.SIGCONT)
        wait_for(
            "the zombie to count its lost segments",
            lambda: metric(zombie, "tailrunner_segments_lost_total") >= len(held),
        )
        # It rejoins under new epochs: the survivor gives some back.
        rejoined = cluster.wait_shared_by([zombie, survivor])
        assert all(
            epoch > held.get(s, -1)
            for s, (owner, epoch, _) in rejoined.items()
            if owner == zombie.incarnation
        )

        # 4. A last round with the two.
        appender.round()
        cluster.wait_effects(appender.appended)
    finally:
        if appender is not None:
            appender.close()
        cluster.stop_all()

    try:
        effects = cluster.effects()
        assert set(effects) == set(appender.appended), "every event handled, none skipped"
        doubled = [event for event, n in effects.items() if n > 1]
        assert not doubled, f"{len(doubled)} effects applied twice"
        assert check_no_overlapping_runs(cluster) > 0
        # The zombie's runs under its old epochs all ended before it was resumed.
        after_resume = cluster.query(
            "SELECT aggregate_id, epoch, finished_at FROM {schema}.tail_runs"
            " WHERE owner = %s AND finished_at >= %s",
            (zombie.incarnation, resumed_at),
        )
        late = [
            row
            for row in after_resume
            if held.get(segment_of("effects", row[0], SEGMENTS)) == row[1]  # type: ignore[arg-type]
        ]
        assert late == [], "the zombie wrote runs under its lost leases"
    finally:
        cluster.drop()
