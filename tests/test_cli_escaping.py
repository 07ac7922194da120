"""Text from the journal or an activity reaches the terminal escaped, never as markup.

Event types, event data, aggregate types and an activity's error text carry
Rich markup (a closing ``[/bold]`` with nothing open made ``status`` and
``runs`` stop with a ``MarkupError``), terminal escape sequences (colour,
the window title by OSC) and a C1 CSI (``\\x9b``). The commands run through
click's CliRunner in a worker thread, against a real loopback journal and a
runner's admin server on the test's event loop.
"""

from __future__ import annotations

import base64
import functools
import io
import json
from collections.abc import AsyncIterator
from uuid import uuid4

import anyio
import click
import pytest
from click.testing import CliRunner, Result
from rich.console import Console
from structlog.testing import capture_logs

from tailrunner.cli import admin as admin_cli
from tailrunner.cli import journal as journal_cli
from tailrunner.cli.params import option_error
from tailrunner.cli.terminal import cell
from tailrunner.errors import InvalidArgument
from tailrunner.model import AggregateRef, NewEvent
from tailrunner.states import TaskState
from tailrunner.testing import LoopbackJournal, loopback_journal
from tests.admin.conftest import Behaviour, fast_options, serve_runner

CLI = click.Group("tailrunner", commands=[*journal_cli.COMMANDS, *admin_cli.COMMANDS])

#: Markup that does not parse, markup that would style, SGR colour, an OSC
#: window title, a C1 CSI and a right-to-left override.
HOSTILE = "bad [/bold] [red]x[/red] \x1b[31mred \x1b]0;title\x07 \x9bcsi \u202eexe"
#: What the CLI shows of it: every control character as its escape, markup as typed.
SHOWN = "bad [/bold] [red]x[/red] \\x1b[31mred \\x1b]0;title\\x07 \\x9bcsi \\u202eexe"
#: Raw bytes that are not UTF-8 (a lone 0x9b) beside UTF-8 controls.
RAW_DATA = b"raw \x1b[2J \x9b \xc2\x9b [/bold] line\nbreak"


@pytest.fixture
async def journal() -> AsyncIterator[LoopbackJournal]:
    async with loopback_journal() as j:
        yield j


async def invoke(*args: str) -> Result:
    """``tailrunner ARGS`` off the event loop that serves the journal and the runner."""
    environment: dict[str, str | None] = {
        "TAILRUNNER_JOURNAL": None,
        "TAILRUNNER_ADMIN": None,
        "TAILRUNNER_ADMIN_TOKEN": None,
    }
    call = functools.partial(CliRunner().invoke, CLI, list(args), env=environment)
    with capture_logs(), anyio.fail_after(30):
        return await anyio.to_thread.run_sync(call)


def shown_safely(result: Result) -> str:
    """The command's stdout, having succeeded and printed no control sequence."""
    assert result.exit_code == 0, result.output
    assert result.exception is None, result.exception
    assert "MarkupError" not in result.output
    for unsafe in ("\x1b", "\x9b", "\x07", "\u202e"):
        assert unsafe not in result.output, (unsafe, result.output)
    return result.stdout


async def test_events_and_aggregates_escape_types_and_data(journal: LoopbackJournal) -> None:
    aggregate = AggregateRef(type=HOSTILE, id=uuid4())
    json_data = json.dumps({"note": HOSTILE}).encode()  # \u001b in the JSON text
    await journal.client.append(
        aggregate,
        [NewEvent(type=HOSTILE, data=json_data), NewEvent(type="raw", data=RAW_DATA)],
    )
    address = ["--journal", journal.address]

    text = shown_safely(await invoke("events", "--id", str(aggregate.id), *address))
    as_json = shown_safely(await invoke("events", "--id", str(aggregate.id), "--json", *address))
    listed = shown_safely(await invoke("aggregates", *address))
    listed_json = shown_safely(await invoke("aggregates", "--json", *address))

    # One line per event: the line break in the raw data is shown as \n.
    first, second = text.splitlines()
    assert first.split("\t")[1] == SHOWN
    assert second.split("\t", 2)[1:] == ["raw", "raw \\x1b[2J \\x9b \\x9b [/bold] line\\nbreak"]
    # --json keeps every value as it is, as valid JSON.
    json_first, json_second = (json.loads(line) for line in as_json.splitlines())
    assert json_first["type"] == HOSTILE and json_first["aggregate_type"] == HOSTILE
    assert json_first["data"] == {"note": HOSTILE}
    assert base64.b64decode(json_second["data_base64"]) == RAW_DATA
    (line,) = listed.splitlines()
    assert line.split("\t")[:2] == [SHOWN, str(aggregate.id)]
    (record,) = (json.loads(line) for line in listed_json.splitlines())
    assert record["type"] == HOSTILE


async def test_status_runs_and_task_show_escape_errors_and_aggregate_types(
    journal: LoopbackJournal,
) -> None:
    aggregate = AggregateRef(type=HOSTILE, id=uuid4())
    await journal.client.append(aggregate, [NewEvent(type=HOSTILE)])
    behaviour = Behaviour(fail={aggregate.id}, error=HOSTILE)
    follow = behaviour.activity(types=(HOSTILE,))
    task = ["follow", str(aggregate.id)]
    async with serve_runner(journal, [follow], options=fast_options(max_attempts=1)) as served:
        await served.changes.wait_until(lambda: served.task(aggregate).state is TaskState.SUSPENDED)
        admin = ["--admin", served.admin.address]
        status = shown_safely(await invoke("status", *admin))
        status_json = shown_safely(await invoke("status", "--json", *admin))
        runs = shown_safely(await invoke("runs", *task, *admin))
        runs_json = shown_safely(await invoke("runs", *task, "--json", *admin))
        show = shown_safely(await invoke("task", "show", *task, *admin))

    error = f"ValueError: {SHOWN}"
    # The tables' ERROR column (the error's start): the markup as typed, as
    # Rich did not read it, and the escapes.
    for table in (status, runs):
        assert "ValueError: bad [/bold] [red]x[/red] \\x1b[31mred" in table
    assert f"{SHOWN}/" in status  # the aggregate: its type escaped too
    assert f"last error  {error}" in show.splitlines()
    assert show.splitlines()[-1].strip() == error
    assert f"aggregate   {SHOWN}/{aggregate.id}" in show.splitlines()
    # --json: the values as they are.
    (task_json,) = (json.loads(line) for line in status_json.splitlines())
    assert task_json["aggregate_type"] == HOSTILE
    assert task_json["last_error"].splitlines()[-1] == f"ValueError: {HOSTILE}"
    (run_json,) = (json.loads(line) for line in runs_json.splitlines())
    assert run_json["error"].splitlines()[-1] == f"ValueError: {HOSTILE}"


def test_a_cell_is_shown_as_typed_and_escaped_on_a_colour_terminal() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, color_system="truecolor", width=200)

    console.print(cell(HOSTILE))

    assert out.getvalue() == SHOWN + "\n"


def test_a_refused_value_quoted_by_the_server_is_escaped() -> None:
    blamed = option_error(InvalidArgument("events[0].type", HOSTILE), {"events[0].type": "--x"})
    unblamed = option_error(InvalidArgument("elsewhere", HOSTILE), {})

    assert blamed.format_message() == f"Invalid value for '--x': {SHOWN}"
    assert unblamed.format_message() == f"elsewhere: {SHOWN}"
