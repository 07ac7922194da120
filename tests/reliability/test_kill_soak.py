"""Kill soak (issue 15): runner and journal SIGKILLed at random moments under appends.

A journal process (SQLite file store) and a runner process (SQLite tail
store) run the e2e recorder plugin, which writes each event id it handles to
a file before it checkpoints that event (at-least-once). A thread appends
all along, each append with a request id of its own, and an append that
fails with UNAVAILABLE or DEADLINE_EXCEEDED (a journal kill) is sent again
with the same request id until acknowledged. The runner is SIGKILLed
``RUNNER_KILLS`` times and the journal ``JOURNAL_KILLS`` times at seeded
random moments; each comes back on the same files. After a last clean run
has caught up:

- every acknowledged append is in the journal exactly once (one event per
  request id: retries created no duplicate), with the id it was acknowledged
  with, and 100 of them sent again at the end (after the journal restarts)
  answer that id and append nothing;
- every journal event was handled at least once (none skipped);
- repeats of handling (printed) are at most one per task per runner kill:
  the recorder checkpoints after each event, so a kill interrupts at most
  the one event each task was handling.

The moments come from a seeded schedule (:func:`schedule`) that holds
every kind at least once: a runner killed while it starts, one killed at
work, the journal killed under a working runner, and the runner killed
while the journal is down.

CI runs 12 runner kills and 4 journal kills per engine with runner lives
of at most 0.6 s. ``TAILRUNNER_SOAK=long`` runs 300 and 100 and lets each
runner live up to 3 s; ``TAILRUNNER_SOAK_SEED=N`` repeats a run.
"""

from __future__ import annotations

import collections
import os
import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from .procs import (
    Appender,
    KillableJournal,
    RunnerProcess,
    list_tasks,
    read_events,
    runner_config,
    seeded,
)

pytestmark = pytest.mark.slow

LONG = os.environ.get("TAILRUNNER_SOAK") == "long"
RUNNER_KILLS = 300 if LONG else 12
JOURNAL_KILLS = 100 if LONG else 4
#: Of the runner kills, the share that lands while it starts (at least one).
WHILE_STARTING = 0.15
#: Of the journal kills, the share during which the runner dies too (at least one).
BOTH_DOWN = 0.3
#: The longest a runner lives after it started before it is killed (seconds).
MAX_LIFE = 3.0 if LONG else 0.6
#: The longest a killed journal stays down.
MAX_DOWN = 1.0 if LONG else 0.4
AGGREGATES = 6
#: Acknowledged appends sent again at the end, with their request ids.
REPEATS = 100
#: Only bounds a hang: the last clean run catching up.
CATCH_UP_TIMEOUT = 180.0


@dataclass(frozen=True)
class Cycle:
    """One runner life: how it ends, and what happens to the journal meanwhile."""

    #: Killed while it starts (before it printed its admin address).
    starting: bool
    #: The journal is killed during this life.
    journal_kill: bool
    #: ... and the runner is killed while the journal is down.
    both_down: bool


def schedule(rng: random.Random) -> list[Cycle]:
    """``RUNNER_KILLS`` cycles, seeded, holding every kind of kill at least once."""
    cycles = range(RUNNER_KILLS)
    starting = set(rng.sample(cycles, max(1, round(RUNNER_KILLS * WHILE_STARTING))))
    journal = rng.sample(cycles, JOURNAL_KILLS)
    both = set(rng.sample(journal, max(1, round(JOURNAL_KILLS * BOTH_DOWN))))
    return [Cycle(n in starting, n in journal, n in both) for n in cycles]


def handled_ids(record: Path) -> list[str]:
    return record.read_text().split() if record.exists() else []


def recorder_tails(admin: str) -> dict[str, str]:
    return {
        task.aggregate_id: task.tail for task in list_tasks(admin) if task.activity == "recorder"
    }


@pytest.mark.parametrize("engine", ["lazy", "eager", "cron"])
def test_kills_lose_no_append_and_skip_no_event(
    engine: str, plugin_site: Path, tmp_path: Path
) -> None:
    """CI: 12 runner and 4 journal kills, runner lives up to 0.6 s (about 20 s per engine).

    On demand: ``TAILRUNNER_SOAK=long`` (300 and 100 kills, lives up to 3 s);
    ``TAILRUNNER_SOAK_SEED=N`` repeats the printed seed's run.
    """
    seed, rng = seeded("TAILRUNNER_SOAK_SEED")
    journal = KillableJournal(tmp_path / "journal.db")
    record = tmp_path / "handled.txt"
    config = runner_config(tmp_path / "runner.toml", journal=journal.address)
    env = {"E2E_RECORD": str(record)}
    aggregates = [uuid.uuid4() for _ in range(AGGREGATES)]
    cycles = schedule(rng)
    runner_kills = journal_kills = 0
    started = time.monotonic()

    journal.start()
    appender = Appender(journal.address, aggregates, rng).start()
    runner: RunnerProcess | None = None
    try:
        for cycle in cycles:
            runner = RunnerProcess(config, engine, plugin_site, env)
            # Most kills land while it works; some while it starts.
            if not cycle.starting:
                runner.wait_started()
            life = rng.uniform(0, MAX_LIFE)
            if cycle.journal_kill:
                before = rng.uniform(0, life)
                time.sleep(before)
                journal.kill()
                journal_kills += 1
                time.sleep(rng.uniform(0.05, MAX_DOWN))
                if cycle.both_down:
                    # The runner dies while the journal is down.
                    runner.kill()
                    runner_kills += 1
                    journal.start()
                    continue
                journal.start()
                time.sleep(max(0.0, life - before))
            else:
                time.sleep(life)
            runner.kill()
            runner_kills += 1
        appender.stop()
        handled_under_kills = len(handled_ids(record))
        # Appends repeated after the journal restarts: each answers its first result.
        repeated = rng.sample(sorted(appender.acked), min(REPEATS, len(appender.acked)))
        differ = appender.repeat(repeated)

        # The clean last run: it catches up with every event, then stops on SIGTERM.
        runner = RunnerProcess(config, engine, plugin_site, env)
        admin = runner.wait_started()
        acked_events = {event_id for _, event_id in appender.acked.values()}
        deadline = time.monotonic() + CATCH_UP_TIMEOUT
        while not acked_events <= set(handled_ids(record)):
            assert time.monotonic() < deadline, (
                f"the last run did not catch up: {len(acked_events - set(handled_ids(record)))}"
                f" events unhandled; runner said {runner.errors()[-5:]}"
            )
            time.sleep(0.2)
        stored = read_events(journal.address, aggregates)
        heads = {str(event.aggregate): event.event_id for event in stored}
        # Its tails follow the handling: each event is recorded, then checkpointed.
        while (tails := recorder_tails(admin)) != heads:
            assert time.monotonic() < deadline, f"tails {tails} are not the heads {heads}"
            time.sleep(0.2)
        assert runner.stop() == 0, f"the last run did not stop cleanly: {runner.errors()[-5:]}"
    finally:
        if runner is not None and runner.proc.poll() is None:
            runner.kill()  # a failed assertion leaves no runner behind
        if appender.running:
            appender.stop()
        if journal.proc is not None:
            journal.stop()

    elapsed = time.monotonic() - started
    handled = handled_ids(record)
    repeats = len(handled) - len(set(handled))
    per_request = collections.Counter(event.request_id for event in stored)
    print(
        f"{engine}: seed {seed}, {runner_kills} runner kills"
        f" ({sum(c.starting for c in cycles)} while starting,"
        f" {sum(c.both_down for c in cycles)} while the journal was down),"
        f" {journal_kills} journal kills,"
        f" {len(appender.acked)} appends acknowledged ({appender.retries} retried tries,"
        f" {len(repeated)} repeated at the end),"
        f" {len(stored)} events in the journal, {len(handled)} handled"
        f" ({handled_under_kills} of them before the last run),"
        f" {repeats} handled again, {elapsed:.1f} s"
    )

    assert runner_kills == RUNNER_KILLS and journal_kills == JOURNAL_KILLS
    assert not appender.failures, f"appends refused: {appender.failures[:5]}"
    assert appender.acked, "no append was acknowledged"
    # The journal: each acknowledged append once, under the id it was acknowledged with.
    assert not differ, f"repeated appends answered another event: {list(differ.items())[:5]}"
    doubled = {rid: n for rid, n in per_request.items() if n != 1}
    assert not doubled, f"request ids with more than one event: {list(doubled.items())[:5]}"
    by_request = {event.request_id: event.event_id for event in stored}
    lost = {rid for rid in appender.acked if rid not in by_request}
    assert not lost, f"{len(lost)} acknowledged appends are not in the journal"
    moved = {rid for rid, (_, event_id) in appender.acked.items() if by_request[rid] != event_id}
    assert not moved, f"events stored under another id than acknowledged: {sorted(moved)[:5]}"
    # The runner: every event handled at least once, repeats only where a kill cut in.
    stored_ids = {event.event_id for event in stored}
    skipped = stored_ids - set(handled)
    assert not skipped, f"{len(skipped)} events were never handled"
    assert set(handled) <= stored_ids, "handled an event the journal does not have"
    assert repeats <= runner_kills * AGGREGATES, (
        f"{repeats} repeats: more than one per task per runner kill ({runner_kills} x {AGGREGATES})"
    )
