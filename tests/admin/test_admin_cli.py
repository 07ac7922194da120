"""``tailrunner status``, ``task …`` and ``runs`` against a runner's admin server.

The commands run in-process (click's CliRunner) in a worker thread while the
test's event loop serves the runner: the admin client is synchronous gRPC,
so it needs no event loop of its own.
"""

from __future__ import annotations

import functools
import json
import uuid

import anyio
import click
from click.testing import CliRunner, Result
from structlog.testing import capture_logs

from tailrunner.cli.admin import COMMANDS
from tailrunner.engines.task import TaskState
from tailrunner.testing import LoopbackJournal

from .conftest import TOKEN, Behaviour, Served, append, new_aggregate, serve_runner

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
        "ACTIVITY", "AGGREGATE", "STATE", "TAIL", "LAG", "TRIES", "LAST", "RUN", "UPDATED", "ERROR",
    ]  # fmt: skip
    row = next(line for line in lines if str(behind.id) in line).split()
    assert row[:3] == ["follow", str(behind), "STOPPED"] and row[4] == "2"
    row = next(line for line in lines if str(caught_up.id) in line).split()
    assert row[2] == "SLEEPING" and row[4] == "0"
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
