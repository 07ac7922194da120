"""Scale-out throughput: events/s with 1, 2 and 3 runners on one PostgreSQL, the same load.

Does adding runners add throughput? Each configuration gets a fresh journal
schema (one journal server in its own process, ``bench.serve journal``) and
a fresh tail schema, and N runner processes (``tailrunner run`` with
``[scaleout] enabled = true``, lazy engine, 64 segments, lease 3 s) of a
plugin built for the run and pip-installed into a folder of its own. Its
activity does a little work per event (SHA-256 chained over the event's
data, :data:`HASH_ROUNDS` times) and writes the effects of each batch in the
tail store's transaction (one ``INSERT`` per batch, committed with the tail).

Once the segments are shared by all N (the live leases in
``<schema>.segment_leases``), the load is appended through the journal: a
round of fresh aggregates, each one ``Append`` of its events, four callers
at once. A sample is the round's events / the time from the first append to
the effects table holding every event (polled every 20 ms). A warm-up round
first, then the median of the rounds; the full run builds each configuration
twice, there and back (1, 2, 3, 3, 2, 1). Every effect must be there exactly
once. The 1-runner figure is the baseline of the 2- and 3-runner figures;
the notes give the cores busy during the rounds (runners, journal server,
the rest) and each runner's share of the segments and of the effects.

Without a reachable PostgreSQL the module reports no figures (a line on
stderr says why; under ``CI=true`` the run fails). Its schemas are dropped
at the end.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc
import psutil
import psycopg
from psycopg import sql

from bench.common import Figure, child_env, median, run_module, serving_process, temp_dir
from bench.pg_journal import drop_schemas, postgres_url, store_url
from tailrunner.journal.client import JournalClient
from tailrunner.journal.postgres import migrate_schema
from tailrunner.model import AggregateRef, NewEvent
from tailrunner.stores import redact

SEGMENTS = 64
LEASE = 3.0
SLACK = 1
#: SHA-256 rounds per event in the activity (about 0.55 ms of CPU on the reference machine).
HASH_ROUNDS = 2000
#: Concurrent ``Append`` callers while a round is loaded.
APPENDERS = 4
#: Every wait for the cluster is bounded by this (seconds): a hang fails the benchmark.
PATIENCE = 120.0
#: The console script beside this interpreter.
TAILRUNNER = shutil.which("tailrunner", path=str(Path(sys.executable).parent)) or "tailrunner"

PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "bench-scaleout"
version = "1.0"

[project.entry-points.tailrunner]
bench-scaleout = "bench_scaleout.hooks"

[tool.hatch.build.targets.wheel]
packages = ["bench_scaleout"]
"""

HOOKS = '''\
"""Per event a little CPU; per batch its effects, in the tail store's transaction."""

import hashlib
import os

from psycopg import sql

from tailrunner import EOF, activity
from tailrunner.plugins import hookimpl

TABLE = sql.Identifier(*os.environ["BENCH_SCALEOUT_EFFECTS"].split("."))
ROUNDS = int(os.environ["BENCH_SCALEOUT_ROUNDS"])
INSERT = sql.SQL("INSERT INTO {} (event_id, pid, digest) VALUES (%s, %s, %s)").format(TABLE)
PID = os.getpid()


def work(data):
    digest = data
    for _ in range(ROUNDS):
        digest = hashlib.sha256(digest + data).digest()
    return digest


@activity(name="bench-scaleout", aggregate_types=["bench-scaleout"], auto_checkpoint=False)
async def effects(ctx, tail, stream):
    async for batch in stream.batches():
        if batch.events:
            rows = [(e.id.bytes, PID, work(e.data)) for e in batch.events]
            last = batch.events[-1].id
            async with ctx.transaction(last) as conn:
                async with conn.cursor() as cursor:
                    await cursor.executemany(INSERT, rows)
            tail = last
        if batch.will_block:
            break
    return EOF(tail)


@hookimpl
def tailrunner_activities():
    return [effects]
'''


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    aggregates: int
    events: int  # per aggregate, one Append each
    rounds: int  # measured, after one warm-up round

    @property
    def per_round(self) -> int:
        return self.aggregates * self.events


def plan(quick: bool) -> Plan:
    if quick:
        return Plan(aggregates=100, events=10, rounds=1)
    return Plan(aggregates=300, events=20, rounds=3)


def build_plugin(root: Path) -> Path:
    """The plugin, built by hatchling and installed with pip into a folder of its own."""
    src, site = root / "plugin-src", root / "plugin-site"
    (src / "bench_scaleout").mkdir(parents=True)
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "bench_scaleout" / "__init__.py").write_text("")
    (src / "bench_scaleout" / "hooks.py").write_text(HOOKS)
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"),
            *("--no-build-isolation", "--target", str(site), str(src)),
        ],
        check=True,
    )
    return site


def runner_config(journal: str, url: str, schema: str) -> str:
    return f"""\
[journal]
address = "{journal}"
[engine]
kind = "lazy"
capacity = 100
shutdown_grace = "3s"
[retry]
initial = "100ms"
max_delay = "1s"
[activities]
enabled = ["bench-scaleout"]
[tails]
store = "{url}"
postgres_schema = "{schema}"
[log]
format = "json"
level = "warning"
[admin]
listen = "127.0.0.1:0"
[metrics]
listen = ""
[scaleout]
enabled = true
segments = {SEGMENTS}
lease = "{LEASE:g}s"
slack = {SLACK}
"""


@dataclass(slots=True)
class RunnerProcess:
    """``tailrunner run`` with its output in a file (never a pipe that could fill)."""

    name: str
    log: Path
    process: anyio.abc.Process

    def check_alive(self) -> None:
        if self.process.returncode is not None:
            tail = "\n".join(self.log.read_text().splitlines()[-20:])
            raise RuntimeError(f"{self.name} exited ({self.process.returncode}):\n{tail}")


@asynccontextmanager
async def runners(
    n: int, config: Path, site: Path, effects: str, folder: Path
) -> AsyncIterator[list[RunnerProcess]]:
    """``n`` runners on ``config``, started at once; SIGTERM (then SIGKILL) on the way out."""
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join([str(site), env["PYTHONPATH"]])
    env["BENCH_SCALEOUT_EFFECTS"] = effects
    env["BENCH_SCALEOUT_ROUNDS"] = str(HASH_ROUNDS)
    started: list[RunnerProcess] = []
    try:
        for i in range(n):
            log = folder / f"runner-{i + 1}.log"
            with log.open("w") as out:  # the child keeps its own descriptor
                process = await anyio.open_process(
                    [TAILRUNNER, "run", "--config", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            started.append(RunnerProcess(f"runner {i + 1}", log, process))
        yield started
    finally:
        with anyio.CancelScope(shield=True):
            for runner in started:
                if runner.process.returncode is None:
                    runner.process.send_signal(signal.SIGTERM)
            for runner in started:
                with anyio.move_on_after(20):
                    await runner.process.wait()
                if runner.process.returncode is None:
                    runner.process.kill()
                    await runner.process.wait()
                await runner.process.aclose()


async def wait_until(what: str, check: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after :data:`PATIENCE` seconds."""
    try:
        with anyio.fail_after(PATIENCE):
            while not await check():  # noqa: ASYNC110 (a database to poll)
                await anyio.sleep(0.02)
    except TimeoutError:
        raise RuntimeError(f"timed out after {PATIENCE:g} s waiting for {what}") from None


async def owners(conn: psycopg.AsyncConnection, schema: str) -> Counter[str]:
    """Live leases per owner; empty while the runners have not made the table yet."""
    query = sql.SQL(
        "SELECT owner, count(*) FROM {}.segment_leases"
        " WHERE owner IS NOT NULL AND expires_at > now() GROUP BY owner"
    ).format(sql.Identifier(schema))
    try:
        rows = await (await conn.execute(query)).fetchall()
    except psycopg.errors.UndefinedTable:
        return Counter()
    return Counter({str(owner): int(count) for owner, count in rows})


async def append_round(client: JournalClient, load: Plan, round_no: int) -> None:
    """One ``Append`` of ``load.events`` events per fresh aggregate, ``APPENDERS`` at once."""
    aggregates = [
        AggregateRef(type="bench-scaleout", id=uuid.uuid4()) for _ in range(load.aggregates)
    ]
    batches = [
        [
            NewEvent(
                type="tick", data=json.dumps({"round": round_no, "n": n, "pad": "x" * 48}).encode()
            )
            for n in range(load.events)
        ]
        for _ in aggregates
    ]

    async def caller(k: int) -> None:
        for aggregate, events in list(zip(aggregates, batches, strict=True))[k::APPENDERS]:
            await client.append(aggregate, events)

    async with anyio.create_task_group() as tg:
        for k in range(APPENDERS):
            tg.start_soon(caller, k)


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    rates: list[float]  # events/s per measured round
    appends: list[float]  # seconds the appends of each measured round took
    held: list[int]  # segments per runner when the load started
    shares: list[float]  # fraction of all effects (warm-up too) each runner wrote
    join: float  # seconds from the start of the runners to the segments shared
    #: Cores busy during the measured rounds: the runners, the journal server, the rest
    #: (PostgreSQL, this process), in CPU seconds per second.
    cpu: tuple[float, float, float]


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def machine_busy() -> float:
    """CPU seconds the whole machine has spent on anything but idling (all cores)."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


@dataclass(slots=True, kw_only=True)
class Session:
    """A cluster on fresh schemas: what the rounds need."""

    conn: psycopg.AsyncConnection
    client: JournalClient
    procs: list[RunnerProcess]
    effects: sql.Identifier
    journal_pid: int

    async def scalar(self, query: str) -> tuple[int, ...]:
        row = await (await self.conn.execute(sql.SQL(query).format(self.effects))).fetchone()
        assert row is not None
        return tuple(int(x) for x in row)

    async def until_effects(self, expected: int, what: str) -> None:
        async def done() -> bool:
            for proc in self.procs:
                proc.check_alive()
            (count,) = await self.scalar("SELECT count(*) FROM {}")
            return count >= expected

        await wait_until(what, done)


async def run_rounds(
    session: Session, load: Plan
) -> tuple[list[float], list[float], tuple[float, float, float]]:
    """A warm-up round, then the measured ones: events/s, append times, cores busy."""
    rates, appends = [], []
    await append_round(session.client, load, 0)
    await session.until_effects(load.per_round, "the effects of the warm-up round")
    pids = [proc.process.pid for proc in session.procs]
    runners_before = sum(cpu_seconds(pid) for pid in pids)
    journal_before, machine_before = cpu_seconds(session.journal_pid), machine_busy()
    began = time.perf_counter()
    for round_no in range(1, load.rounds + 1):
        start = time.perf_counter()
        await append_round(session.client, load, round_no)
        appends.append(time.perf_counter() - start)
        await session.until_effects(
            load.per_round * (round_no + 1), f"the effects of round {round_no}"
        )
        rates.append(load.per_round / (time.perf_counter() - start))
    wall = time.perf_counter() - began
    runners = sum(cpu_seconds(pid) for pid in pids) - runners_before
    journal = cpu_seconds(session.journal_pid) - journal_before
    rest = machine_busy() - machine_before - runners - journal
    return rates, appends, (runners / wall, journal / wall, max(rest, 0.0) / wall)


async def measure_cluster(url: str, n: int, site: Path, folder: Path, load: Plan) -> Result:
    """Start ``n`` runners on fresh schemas, load the rounds, time each to its last effect."""
    tag = uuid.uuid4().hex[:12]
    journal_schema, tail_schema = f"tailrunner_bench_so_j_{tag}", f"tailrunner_bench_so_t_{tag}"
    effects = sql.Identifier(tail_schema, "effects")
    config = folder / f"runner-{n}.toml"
    try:
        await migrate_schema(url, schema=journal_schema)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(tail_schema)))
            await conn.execute(
                sql.SQL(
                    "CREATE TABLE {} (event_id bytea NOT NULL, pid integer NOT NULL,"
                    " digest bytea NOT NULL)"
                ).format(effects)
            )
            store = store_url(url, journal_schema)
            async with serving_process("journal", "--store", store) as (address, journal_pid):
                config.write_text(runner_config(address, url, tail_schema))
                began = time.perf_counter()
                async with (
                    runners(n, config, site, f"{tail_schema}.effects", folder) as procs,
                    JournalClient.connect(address, timeout=30) as client,
                ):
                    fair = math.ceil(SEGMENTS / n) + SLACK
                    held: list[Counter[str]] = []

                    async def shared() -> bool:
                        for proc in procs:
                            proc.check_alive()
                        live = await owners(conn, tail_schema)
                        held.append(live)
                        return (
                            len(live) == n
                            and sum(live.values()) == SEGMENTS
                            and max(live.values()) <= fair
                        )

                    await wait_until(f"the segments shared by {n} runners", shared)
                    join = time.perf_counter() - began
                    session = Session(
                        conn=conn,
                        client=client,
                        procs=procs,
                        effects=effects,
                        journal_pid=journal_pid,
                    )
                    rates, appends, cpu = await run_rounds(session, load)
            expected = load.per_round * (load.rounds + 1)
            distinct, total = await session.scalar(
                "SELECT count(DISTINCT event_id), count(*) FROM {}"
            )
            if (distinct, total) != (expected, expected):
                raise RuntimeError(
                    f"effects not exactly once: {distinct} events, {total} effects,"
                    f" {expected} appended"
                )
            query = "SELECT pid, count(*) FROM {} GROUP BY pid ORDER BY count(*) DESC"
            by_pid = await (await conn.execute(sql.SQL(query).format(effects))).fetchall()
        return Result(
            rates=rates,
            appends=appends,
            held=sorted(held[-1].values(), reverse=True),
            shares=[int(count) / expected for _, count in by_pid],
            join=join,
            cpu=cpu,
        )
    finally:
        drop_schemas(url, [journal_schema, tail_schema])


def work_cost() -> float:
    """CPU seconds the activity's per-event work takes here (this process, alone)."""
    data = json.dumps({"round": 0, "n": 0, "pad": "x" * 48}).encode()
    start = time.process_time()
    for _ in range(100):
        digest = data
        for _ in range(HASH_ROUNDS):
            digest = hashlib.sha256(digest + data).digest()
    return (time.process_time() - start) / 100


def figures_of(results: dict[int, list[Result]], load: Plan, cost: float) -> list[Figure]:
    def rate(n: int) -> float:
        return median([x for r in results[n] for x in r.rates])

    def described(n: int) -> str:
        first = results[n][0]
        shares = "/".join(f"{s:.0%}" for s in first.shares)
        held = "/".join(str(h) for h in first.held)
        appends = median([x for r in results[n] for x in r.appends])
        runners, journal, rest = (
            sum(r.cpu[i] for r in results[n]) / len(results[n]) for i in range(3)
        )
        return (
            f"{n}: {rate(n):,.0f} events/s, segments {held}, effects {shares},"
            f" appends {appends:.2f} s a round, joined in {first.join:.1f} s, cores busy"
            f" {runners + journal + rest:.2f} (runners {runners:.2f}, journal {journal:.2f},"
            f" PostgreSQL and anything else on the machine {rest:.2f})"
        )

    passes = len(results[1])
    order = "1, 2, 3 then 3, 2, 1" if passes == 2 else "1, 2, 3"
    passed = "one pass" if passes == 1 else f"{passes} passes"
    note = (
        f"{load.aggregates} aggregates of {load.events} events a round (one Append each,"
        f" {APPENDERS} callers); per configuration fresh schemas, a warm-up round, then"
        f" {load.rounds} timed; {passed}, configurations in the order {order},"
        f" median of {load.rounds * passes} rounds; lazy, {SEGMENTS} segments, lease"
        f" {LEASE:g} s; per event {HASH_ROUNDS} SHA-256 rounds ({cost * 1000:.2f} ms of CPU:"
        f" at most {1 / cost:,.0f} events/s a core), per batch one INSERT in the tail"
        f" transaction; one journal server and PostgreSQL on the same machine, which has"
        f" {os.cpu_count()} cores (os.cpu_count()) for the runners, the journal and"
        f" PostgreSQL together, so 3 runners cannot beat 2 on CPU. Per configuration (the"
        f" median rate, the mean of the cores busy; segments, effects and join of the first"
        f" pass): " + "; ".join(described(n) for n in sorted(results))
    )
    return [
        Figure(
            name=f"scale-out throughput, {n} runners, PostgreSQL",
            unit="events/s",
            tailrunner=rate(n),
            baseline=rate(1),
            baseline_name="1 runner, the same load",
            higher_is_better=True,
            note=note,
        )
        for n in sorted(results)
        if n > 1
    ]


async def measure(quick: bool) -> list[Figure]:
    url = postgres_url()
    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.Error as exc:
        message = f"bench.scaleout_throughput: no PostgreSQL at {redact(url)}: {exc}"
        if os.environ.get("CI") == "true":
            # CI has PostgreSQL: a benchmark that cannot reach it has rotted.
            raise SystemExit(f"{message} (CI=true: PostgreSQL must be reachable)") from exc
        print(f"{message}; no figures", file=sys.stderr)
        return []
    load = plan(quick)
    cost = work_cost()
    # Full runs go there and back (1, 2, 3, 3, 2, 1): a drift in the machine's other
    # load then weighs on every configuration alike.
    order = [1, 2, 3] if quick else [1, 2, 3, 3, 2, 1]
    results: dict[int, list[Result]] = {}
    async with temp_dir("scaleout") as folder:
        site = build_plugin(folder)
        for n in order:
            results.setdefault(n, []).append(await measure_cluster(url, n, site, folder, load))
    return figures_of(results, load, cost)


if __name__ == "__main__":
    run_module(measure)
