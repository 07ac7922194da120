"""``tailrunner ping-registry …`` through click's CliRunner, against a loopback journal.

The commands run in a worker thread (each makes its own event loop and
journal client) while the test's loop serves the journal; the test checks
and prepares the journal with a ``PingRegistry`` of its own.
"""

from __future__ import annotations

import functools
import json
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import anyio
import click
import pytest
from click.testing import CliRunner, Result
from structlog.testing import capture_logs

from tailrunner.cli.ping_registry import COMMANDS
from tailrunner.testing import LoopbackJournal, loopback_journal
from tailrunner.workflows.aggregates import RETRY_NO_VC
from tailrunner.workflows.pingregistry.behaviour import Commit
from tailrunner.workflows.pingregistry.registry import SUMMARY_MESSAGE, PingRegistry, index_id
from tailrunner.workflows.pingregistry.state import StateCode

CLI = click.Group("tailrunner", commands=COMMANDS)
DEADLINE = datetime(2026, 12, 1, 13, 0, 30, 250_000, tzinfo=UTC)


@pytest.fixture
async def journal() -> AsyncIterator[LoopbackJournal]:
    async with loopback_journal() as j:
        yield j


@pytest.fixture
def registry(journal: LoopbackJournal) -> PingRegistry:
    return PingRegistry(journal.client)


async def invoke(address: str | None, *args: str, env: dict[str, str] | None = None) -> Result:
    """``tailrunner ping-registry ARGS [--journal ADDRESS]``, off the journal's event loop."""
    journal = [] if address is None else ["--journal", address]
    environment: dict[str, str | None] = {"TAILRUNNER_JOURNAL": None, **(env or {})}
    call = functools.partial(
        CliRunner().invoke, CLI, ["ping-registry", *args, *journal], env=environment
    )
    # The journal server's log lines would land in the captured output.
    with capture_logs(), anyio.fail_after(30):
        return await anyio.to_thread.run_sync(call)


def ok(result: Result) -> str:
    assert (result.exit_code, result.stderr) == (0, ""), result.output
    return result.stdout


def refused(result: Result, code: int = 1) -> str:
    """The one-line error of a command that failed, having printed nothing on stdout."""
    assert (result.exit_code, result.stdout) == (code, ""), result.output
    return result.stderr.strip()


# --------------------------------------------------------------------------- begin


async def test_begin_prints_the_id_of_a_new_workflow(
    journal: LoopbackJournal, registry: PingRegistry
) -> None:
    before = datetime.now(UTC)
    out = ok(await invoke(journal.address, "begin", "--registry", "main", "--deadline", "1m30s"))
    after = datetime.now(UTC)

    workflow = UUID(out.strip())
    assert out == f"{workflow}\n"
    state = await registry.show(workflow)
    assert (state.code, state.registry) == (StateCode.INITIALIZED, "main")
    assert state.deadline is not None
    assert before + timedelta(seconds=90) <= state.deadline <= after + timedelta(seconds=90)
    assert [e.workflow for e in await registry.list("main")] == [workflow]


async def test_begin_finds_the_journal_in_the_environment(
    journal: LoopbackJournal, registry: PingRegistry
) -> None:
    result = await invoke(
        None, "begin", "--registry", "main", env={"TAILRUNNER_JOURNAL": journal.address}
    )

    workflow = UUID(ok(result).strip())
    assert (await registry.show(workflow)).registry == "main"


@pytest.mark.parametrize(
    ("deadline", "reason"),
    [
        ("soon", "expected a duration such as 30s, 5m or 1h30m"),
        ("-5s", "expected a duration such as 30s, 5m or 1h30m"),
        ("1x", "expected a duration such as 30s, 5m or 1h30m"),
        ("367d", "expected a duration such as 30s, 5m or 1h30m"),
        ("8785h", "too long (at most 366 days)"),
        ("70000000h", "expected a duration such as 30s, 5m or 1h30m"),
        ("1e20", "expected a duration such as 30s, 5m or 1h30m"),
    ],
)
async def test_a_bad_deadline_names_the_option(
    journal: LoopbackJournal, deadline: str, reason: str
) -> None:
    result = await invoke(journal.address, "begin", "--registry", "main", "--deadline", deadline)

    error = refused(result, code=2).splitlines()[-1]
    assert error == f"Error: Invalid value for '--deadline': {deadline!r}: {reason}"


@pytest.mark.parametrize("command", ["begin", "list"])
async def test_an_empty_registry_names_the_option(
    journal: LoopbackJournal, registry: PingRegistry, command: str
) -> None:
    result = await invoke(journal.address, command, "--registry", "")

    error = refused(result, code=2)
    assert error.splitlines()[-1] == "Error: Invalid value for '--registry': must not be empty"
    assert await registry.list("main") == ()


# --------------------------------------------------------------------------- show and list


async def test_show_prints_state_registry_deadline_pings_and_summary(
    journal: LoopbackJournal, registry: PingRegistry
) -> None:
    workflow = await registry.begin("main", DEADLINE)
    await registry.ping(workflow, pinger="server-1", count=1)
    await registry.ping(workflow, pinger="server-2", count=1, code=5, message="disk full")
    state = await registry.summarize(workflow)
    assert state.summary is not None
    first, second = state.pings

    out = ok(await invoke(journal.address, "show", str(workflow)))

    assert out.splitlines() == [
        f"workflow  {workflow}",
        "state     summarized",
        "registry  main",
        "deadline  2026-12-01T13:00:30.250000+00:00",
        "pings     2",
        f"  {first.event_id}  code 0  server-1: ok",
        f"  {second.event_id}  code 5  server-2: disk full",
        f"summary   code 0: {SUMMARY_MESSAGE} (2 pings, event {state.summary.event_id})",
    ]


async def test_show_json_has_every_field(journal: LoopbackJournal, registry: PingRegistry) -> None:
    workflow = await registry.begin("main", DEADLINE)
    await registry.ping(workflow, pinger="server-1", count=1, code=3, message="slow")
    state = await registry.summarize(workflow)
    assert state.summary is not None

    shown = json.loads(ok(await invoke(journal.address, "show", "--json", str(workflow))))

    assert shown == {
        "workflow": str(workflow),
        "state": "summarized",
        "registry": "main",
        "deadline": "2026-12-01T13:00:30.250000+00:00",
        "pings": [
            {
                "code": 3,
                "message": "slow",
                "pinger": "server-1",
                "event_id": str(state.pings[0].event_id),
            }
        ],
        "summary": {
            "code": 0,
            "message": SUMMARY_MESSAGE,
            "pings": 1,
            "event_id": str(state.summary.event_id),
        },
    }


async def test_show_of_a_new_workflow_has_no_pings_and_no_summary(
    journal: LoopbackJournal, registry: PingRegistry
) -> None:
    workflow = await registry.begin("main", DEADLINE)

    text = ok(await invoke(journal.address, "show", str(workflow)))
    shown = json.loads(ok(await invoke(journal.address, "show", "--json", str(workflow))))

    assert text.splitlines()[-2:] == ["pings     0", "summary   -"]
    assert (shown["state"], shown["pings"], shown["summary"]) == ("initialized", [], None)


async def test_show_keeps_control_characters_off_the_terminal(
    journal: LoopbackJournal, registry: PingRegistry
) -> None:
    workflow = await registry.begin("main", DEADLINE)
    await registry.ping(workflow, pinger="server-1", count=1, message="evil\x1b[2Jline\nbreak")

    out = ok(await invoke(journal.address, "show", str(workflow)))

    assert "\x1b" not in out
    assert len(out.splitlines()) == 7, "the message's newline does not make a line of its own"


async def test_show_of_an_unknown_or_malformed_id_is_refused(journal: LoopbackJournal) -> None:
    workflow = uuid4()

    unknown = refused(await invoke(journal.address, "show", str(workflow)))
    malformed = refused(await invoke(journal.address, "show", "not-a-uuid"), code=2)

    assert unknown.startswith("Error: no such workflow (")
    assert str(workflow) in unknown
    assert "'ID'" in malformed


async def test_show_of_an_aggregate_that_is_no_workflow_names_its_type(
    journal: LoopbackJournal, registry: PingRegistry
) -> None:
    await registry.begin("main", DEADLINE)

    error = refused(await invoke(journal.address, "show", str(index_id("main"))))

    assert error.startswith("Error: AggregateTypeMismatch: ")
    assert "is a 'ping-registry-index', not a 'ping-registry'" in error


async def test_list_prints_the_indexed_workflows_of_a_registry(
    journal: LoopbackJournal, registry: PingRegistry
) -> None:
    first = await registry.begin("main", DEADLINE)
    await registry.begin("backup", DEADLINE)
    second = await registry.begin("main", DEADLINE + timedelta(seconds=5))
    await registry.summarize(second)
    await registry.commit(second)

    text = ok(await invoke(journal.address, "list", "--registry", "main"))
    lines = ok(await invoke(journal.address, "list", "--registry", "main", "--json"))
    empty = ok(await invoke(journal.address, "list", "--registry", "lab"))

    assert text.splitlines() == [
        f"{first}\tstarted\t2026-12-01T13:00:30.250000+00:00",
        f"{second}\tcompleted\t2026-12-01T13:00:35.250000+00:00",
    ]
    assert [json.loads(line) for line in lines.splitlines()] == [
        {
            "workflow": str(first),
            "state": "started",
            "deadline": "2026-12-01T13:00:30.250000+00:00",
        },
        {
            "workflow": str(second),
            "state": "completed",
            "deadline": "2026-12-01T13:00:35.250000+00:00",
        },
    ]
    assert empty == ""


# --------------------------------------------------------------------------- commit and delete


async def test_commit_before_the_summary_names_the_state(
    journal: LoopbackJournal, registry: PingRegistry
) -> None:
    workflow = await registry.begin("main", DEADLINE)

    error = refused(await invoke(journal.address, "commit", str(workflow)))

    assert error == "Error: commit is not allowed in state initialized"
    assert (await registry.show(workflow)).code is StateCode.INITIALIZED


async def test_commit_after_the_summary_terminates_the_workflow(
    journal: LoopbackJournal, registry: PingRegistry
) -> None:
    workflow = await registry.begin("main", DEADLINE)
    await registry.summarize(workflow)

    out = ok(await invoke(journal.address, "commit", str(workflow)))
    again = ok(await invoke(journal.address, "commit", str(workflow)))

    assert out == again == f"{workflow}\tterminated\n"
    assert (await registry.show(workflow)).code is StateCode.TERMINATED
    listed = ok(await invoke(journal.address, "list", "--registry", "main"))
    assert listed.split("\t")[:2] == [str(workflow), "completed"]


async def test_commit_finishes_an_interrupted_commit(
    journal: LoopbackJournal, registry: PingRegistry
) -> None:
    workflow = await registry.begin("main", DEADLINE)
    await registry.summarize(workflow)
    await registry.workflows.tell(workflow, Commit(), RETRY_NO_VC)

    out = ok(await invoke(journal.address, "commit", str(workflow)))

    assert out == f"{workflow}\tterminated\n"


async def test_commit_of_an_unknown_workflow_says_so(journal: LoopbackJournal) -> None:
    workflow = uuid4()

    error = refused(await invoke(journal.address, "commit", str(workflow)))

    assert error.startswith("Error: no such workflow (") and str(workflow) in error


async def test_delete_removes_a_committed_workflow_from_the_list(
    journal: LoopbackJournal, registry: PingRegistry
) -> None:
    workflow = await registry.begin("main", DEADLINE)
    kept = await registry.begin("main", DEADLINE)
    await registry.summarize(workflow)
    ok(await invoke(journal.address, "commit", str(workflow)))

    out = ok(await invoke(journal.address, "delete", str(workflow)))

    assert out == f"{workflow}\tdeleted\n"
    listed = ok(await invoke(journal.address, "list", "--registry", "main"))
    assert [line.split("\t")[0] for line in listed.splitlines()] == [str(kept)]


async def test_delete_of_a_workflow_not_completed_names_its_state(
    journal: LoopbackJournal, registry: PingRegistry
) -> None:
    workflow = await registry.begin("main", DEADLINE)
    await registry.summarize(workflow)

    error = refused(await invoke(journal.address, "delete", str(workflow)))

    assert error == "Error: delete is not allowed in state summarized"
    assert [e.workflow for e in await registry.list("main")] == [workflow]


# --------------------------------------------------------------------------- the journal


async def test_an_unreachable_journal_is_named() -> None:
    # A port that was free a moment ago: nothing listens on it.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"

    for args in (["begin", "--registry", "main"], ["show", str(uuid4())]):
        error = refused(await invoke(address, *args))
        assert error.startswith(f"Error: cannot reach the journal at {address}: "), error
