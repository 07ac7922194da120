"""``tailrunner status``, ``task …`` and ``runs`` against a runner's admin server.

The commands run in-process (click's CliRunner) in a worker thread while the
test's event loop serves the runner: the admin client is synchronous gRPC,
so it needs no event loop of its own.
"""

from __future__ import annotations

import functools
import json
import uuid
from datetime import UTC, datetime, timedelta

import anyio
import click
import pytest
from click.testing import CliRunner, Result
from structlog.testing import capture_logs

from tailrunner.cli.admin import COMMANDS
from tailrunner.engines.base import Engine
from tailrunner.engines.factory import EngineOptions
from tailrunner.engines.retry import RetryPolicy
from tailrunner.engines.task import Task
from tailrunner.errors import StoreError
from tailrunner.states import TaskState
from tailrunner.testing import LoopbackJournal

from .conftest import (
    TOKEN,
    Behaviour,
    Served,
    append,
    fast_options,
    new_aggregate,
    serve_runner,
)

CLI = click.Group("tailrunner", commands=COMMANDS)


async def invoke(served: Served, *args: str, env: dict[str, str | None] | None = None) -> Result:
    """Run ``tailrunner ARGS --admin ADDRESS`` without blocking the loop that serves it."""
    environment: dict[str, str | None] = {"TAILRUNNER_ADMIN_TOKEN": None, "TAILRUNNER_ADMIN": None}
    environment.update(env or {})
    call = functools.partial(
        CliRunner().invoke, CLI, [*args, "--admin", served.admin.address], env=environment
    )
    # The runner's log lines would land in the captured stdout: keep them out.
    with capture_logs():
        return await anyio.to_thread.run_sync(call)


def json_lines(result: Result) -> list[dict[str, object]]:
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


async def test_status_prints_a_table_with_lag_and_filters_by_state(
    journal: LoopbackJournal,
) -> None:
    behind, caught_up = new_aggregate(), new_aggregate()
    await append(journal, behind, 1)
    await append(journal, caught_up, 1)
    async with serve_runner(journal, [Behaviour().activity()]) as served:
        await served.settled(behind, caught_up)
        await served.runner.engine.stop(served.task(behind))
        await append(journal, behind, 2)

        table = await invoke(served, "status")
        stopped = await invoke(served, "status", "--state", "stopped", "--json")
        limited = await invoke(served, "status", "--limit", "1", "--json")

    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "ACTIVITY", "AGGREGATE", "STATE", "WAITS", "FOR", "NEXT", "RUN", "TAIL", "LAG", "TRIES",
        "LAST", "RUN", "UPDATED", "ERROR",
    ]  # fmt: skip
    row = next(line for line in lines if str(behind.id) in line).split()
    # STOPPED waits for an operator: "stopped", no next run.
    assert row[:6] == ["follow", str(behind), "STOPPED", "stopped", "-", row[5]] and row[6] == "2"
    row = next(line for line in lines if str(caught_up.id) in line).split()
    assert row[2] == "SLEEPING" and row[3] == "signal"
    (only,) = json_lines(stopped)
    assert (only["aggregate_id"], only["state"], only["lag"]) == (str(behind.id), "STOPPED", 2)
    assert len(json_lines(limited)) == 1
    assert "raise --limit" in limited.stderr


async def test_task_commands_stop_show_resume_restart_and_list_runs(
    journal: LoopbackJournal,
) -> None:
    agg = new_aggregate()
    ids = await append(journal, agg, 2)
    behaviour = Behaviour()
    async with serve_runner(journal, [behaviour.activity()]) as served:
        await served.settled(agg)
        key = ("follow", str(agg.id))

        (stopped,) = json_lines(await invoke(served, "task", "stop", *key, "--json"))
        shown = await invoke(served, "task", "show", *key)
        (resumed,) = json_lines(await invoke(served, "task", "resume", *key, "--json"))
        await served.settled(agg)
        restarted = await invoke(served, "task", "restart", *key, "--from-tail", str(ids[0]))
        await served.changes.wait_until(lambda: len(behaviour.started_from[agg.id]) >= 2)
        await served.settled(agg)
        runs = json_lines(await invoke(served, "runs", *key, "--json"))
        runs_table = await invoke(served, "runs", *key)

        assert served.task(agg).state is TaskState.SLEEPING
    assert stopped["state"] == "STOPPED" and stopped["tail"] == str(ids[-1])
    assert shown.exit_code == 0, shown.output
    assert "state       STOPPED\n" in shown.stdout and "\nlag         0\n" in shown.stdout
    assert resumed["state"] in ("PENDING", "RUNNING", "SLEEPING")
    assert restarted.exit_code == 0, restarted.output
    assert ids[0] in behaviour.started_from[agg.id]
    assert runs[0]["tail_before"] == str(ids[0]) and runs[0]["outcome"] == "eof"
    # Controls record no run of their own (no fake "stopped, 0 events").
    assert {r["outcome"] for r in runs} == {"eof"}
    assert runs_table.exit_code == 0 and "TAIL BEFORE" in runs_table.stdout


async def test_errors_are_one_line_naming_the_problem(journal: LoopbackJournal) -> None:
    agg = new_aggregate()
    await append(journal, agg, 1)
    stranger = str(uuid.uuid4())
    async with serve_runner(journal, [Behaviour().activity()]) as served:
        unknown = await invoke(served, "task", "show", "follow", stranger)
        bad_id = await invoke(served, "task", "stop", "follow", "not-a-uuid")
        no_origin = await invoke(served, "task", "restart", "follow", str(agg.id))
        foreign = await invoke(
            served, "task", "restart", "follow", str(agg.id), "--from-tail", str(stranger_ulid())
        )

    assert unknown.exit_code == 1
    assert unknown.stderr.startswith(f"Error: task follow/{stranger}: neither this runner")
    assert bad_id.exit_code == 2 and "'not-a-uuid' is not a UUID" in bad_id.stderr
    assert no_origin.exit_code == 2 and "exactly one of --from-tail" in no_origin.stderr
    assert foreign.exit_code == 2 and "is not an event of aggregate" in foreign.stderr


def stranger_ulid() -> str:
    from ulid import ULID

    return str(ULID())


async def test_the_token_comes_from_an_environment_variable(journal: LoopbackJournal) -> None:
    async with serve_runner(journal, [Behaviour().activity()], token=TOKEN) as served:
        without = await invoke(served, "status")
        wrong = await invoke(served, "status", env={"TAILRUNNER_ADMIN_TOKEN": "guess"})
        right = await invoke(served, "status", env={"TAILRUNNER_ADMIN_TOKEN": TOKEN})
        other_var = await invoke(
            served, "status", "--json", "--token-env", "MY_TOKEN", env={"MY_TOKEN": TOKEN}
        )

    assert without.exit_code == 1
    assert "wants a token: set $TAILRUNNER_ADMIN_TOKEN" in without.stderr
    assert wrong.exit_code == 1 and "is not the runner's" in wrong.stderr
    assert right.exit_code == 0 and right.stdout.strip() == "no tasks"
    assert other_var.exit_code == 0 and other_var.stdout == ""
    assert TOKEN not in without.stderr + wrong.stderr


async def test_status_and_show_say_why_a_task_waits_and_when_it_runs_next(
    journal: LoopbackJournal,
) -> None:
    failing, waiting, sleeping = new_aggregate(), new_aggregate(), new_aggregate()
    for agg in (failing, waiting, sleeping):
        await append(journal, agg, 1)
    when = datetime.now(UTC) + timedelta(hours=2)
    behaviour = Behaviour(fail={failing.id}, retry_after={waiting.id: when})
    options = EngineOptions(kind="lazy", retry=RetryPolicy(initial=600, max_delay=600, jitter=0.0))
    async with serve_runner(journal, [behaviour.activity()], options=options) as served:
        await served.settled(failing, waiting, sleeping)
        table = await invoke(served, "status")
        listed = {
            t["aggregate_id"]: t for t in json_lines(await invoke(served, "status", "--json"))
        }
        shown = await invoke(served, "task", "show", "follow", str(failing.id))
        (shown_json,) = json_lines(
            await invoke(served, "task", "show", "follow", str(waiting.id), "--json")
        )

    assert table.exit_code == 0, table.output
    rows = {
        agg: next(line for line in table.stdout.splitlines() if str(agg.id) in line)
        for agg in (failing, waiting, sleeping)
    }
    assert " RETRY " in rows[failing] and " backoff " in rows[failing]
    assert " in 9m " in rows[failing] or " in 10m " in rows[failing]
    assert " WAITING " in rows[waiting] and " retry_after " in rows[waiting]
    assert " in 1h " in rows[waiting]
    assert " signal (backstop in " in rows[sleeping]
    assert listed[str(failing.id)]["wait_reason"] == "backoff"
    assert listed[str(waiting.id)]["state"] == "WAITING"
    assert listed[str(sleeping.id)]["wait_reason"] == "signal"
    assert listed[str(sleeping.id)]["recheck"] is not None
    assert listed[str(sleeping.id)]["next_run"] is None
    for record in listed.values():
        assert {"wait_reason", "next_run", "recheck", "pending_control"} <= record.keys()
    assert shown.exit_code == 0, shown.output
    assert "\nwaits for   backoff\n" in shown.stdout
    assert "\nnext run    in " in shown.stdout
    next_run = datetime.fromisoformat(str(shown_json["next_run"]))
    assert abs(next_run - when) <= timedelta(seconds=1)
    assert shown_json["wait_reason"] == "retry_after" and shown_json["pending_control"] is None


#: An error whose text tries to take over the terminal: clear the screen, set
#: the title, a Rich markup tag, and a right-to-left override.
HOSTILE = "bad \x1b[2J\x1b]0;pwned\x07 [bold red]event[/] \u202egnp.exe"


async def test_runs_shows_the_last_line_and_task_show_the_whole_traceback_escaped(
    journal: LoopbackJournal,
) -> None:
    agg = new_aggregate()
    await append(journal, agg, 1)
    behaviour = Behaviour(fail={agg.id}, error=HOSTILE)
    key = ("follow", str(agg.id))
    async with serve_runner(
        journal, [behaviour.activity()], options=fast_options(max_attempts=1)
    ) as served:
        await served.changes.wait_until(lambda: served.task(agg).state is TaskState.SUSPENDED)
        (stored,) = await served.tails.list_runs("follow", agg.id)
        table = await invoke(served, "runs", *key)
        (run_json,) = json_lines(await invoke(served, "runs", *key, "--json"))
        shown = await invoke(served, "task", "show", *key)
        (shown_json,) = json_lines(await invoke(served, "task", "show", *key, "--json"))
        status = await invoke(served, "status")

    assert stored.error is not None
    exception = f"ValueError: {HOSTILE}"
    assert stored.error.splitlines()[-1] == exception
    escaped = "ValueError: bad \\x1b[2J\\x1b]0;pwned\\x07 [bold red]event[/] \\u202egnp.exe"
    for result in (table, shown, status):
        assert result.exit_code == 0, result.output
        assert "\x1b" not in result.stdout and "\x07" not in result.stdout
        assert "\u202e" not in result.stdout
    # runs: only the last line, escaped, and markup shown as typed.
    assert escaped[:40] in table.stdout
    assert "Traceback" not in table.stdout
    assert "bad \\x1b[2J" in status.stdout
    # runs --json and task show: the whole text.
    assert run_json["error"] == stored.error
    assert shown_json["last_failed_run"]["error"] == stored.error
    lines = shown.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("failed run  error "))
    traceback = [line.removeprefix(" " * 12) for line in lines[start + 1 :]]
    assert traceback[-1] == escaped
    assert len(traceback) == len(stored.error.splitlines())


async def test_resuming_a_task_that_is_not_suspended_says_why_and_fails(
    journal: LoopbackJournal,
) -> None:
    agg = new_aggregate()
    await append(journal, agg, 1)
    async with serve_runner(journal, [Behaviour().activity()]) as served:
        await served.settled(agg)
        result = await invoke(served, "task", "resume", "follow", str(agg.id))

    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: task follow/{agg.id} is SLEEPING: only a SUSPENDED or STOPPED task can be"
        " resumed\n"
    )
    assert result.stdout == ""


async def test_a_control_that_could_not_be_stored_is_reported_and_fails(
    journal: LoopbackJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    agg = new_aggregate()
    await append(journal, agg, 1)

    async def stop_but_fail_to_store(self: Engine, task: Task) -> None:
        raise StoreError("tail store tails.db: save_with_run failed: disk I/O error")

    async with serve_runner(journal, [Behaviour().activity()]) as served:
        await served.settled(agg)
        monkeypatch.setattr(Engine, "stop", stop_but_fail_to_store)
        result = await invoke(served, "task", "stop", "follow", str(agg.id))

    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"Error: task follow/{agg.id}: stop is applied in memory but not yet stored"
    )
    assert "disk I/O error" in result.stderr
    assert "admin address" not in result.stderr
