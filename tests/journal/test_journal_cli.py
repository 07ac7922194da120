"""The journal commands, run as the user runs them: subprocesses of the ``tailrunner`` CLI."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any
from uuid import uuid4

import anyio
import pytest

pytestmark = pytest.mark.slow

ServeJournal = Callable[[str], AbstractAsyncContextManager[Any]]


async def _run(command: list[str], *args: str) -> tuple[int, str, str]:
    with anyio.fail_after(30):
        result = await anyio.run_process([*command, *args], check=False)
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def test_cli_round_trip_serve_append_events_aggregates(
    tailrunner_cli: list[str], serve_journal: ServeJournal, tmp_path: Path
) -> None:
    aggregate_id = str(uuid4())
    payload = tmp_path / "paid.json"
    payload.write_text('{"amount": 12}')

    async with serve_journal(f"sqlite:///{tmp_path / 'journal.db'}") as served:
        journal = ["--journal", served.address]
        code, first_tail, err = await _run(
            tailrunner_cli,
            "append", *journal, "--type", "order", "--id", aggregate_id,
            "--event-type", "placed", "--data", '{"sku": "a-1"}',
        )  # fmt: skip
        assert (code, err) == (0, "")
        first_tail = first_tail.strip()

        code, second_tail, err = await _run(
            tailrunner_cli,
            "append", *journal, "--type", "order", "--id", aggregate_id,
            "--event-type", "paid", "--data", f"@{payload}", "--expect-tail", first_tail,
        )  # fmt: skip
        assert (code, err) == (0, "")
        second_tail = second_tail.strip()

        code, out, err = await _run(
            tailrunner_cli, "events", *journal, "--id", aggregate_id, "--json"
        )
        assert (code, err) == (0, "")
        events = [json.loads(line) for line in out.splitlines()]
        assert [(e["id"], e["parent"], e["type"], e["data"]) for e in events] == [
            (first_tail, None, "placed", {"sku": "a-1"}),
            (second_tail, first_tail, "paid", {"amount": 12}),
        ]
        assert {(e["aggregate_type"], e["aggregate_id"]) for e in events} == {
            ("order", aggregate_id)
        }

        code, out, _ = await _run(
            tailrunner_cli, "events", *journal, "--id", aggregate_id, "--after", first_tail
        )
        assert code == 0
        assert out.splitlines() == [f'{second_tail}\tpaid\t{{"amount": 12}}']

        code, out, _ = await _run(tailrunner_cli, "aggregates", *journal)
        assert code == 0
        assert out.splitlines() == [f"order\t{aggregate_id}\t{second_tail}\t2"]

        code, out, _ = await _run(tailrunner_cli, "aggregates", *journal, "--type", "user")
        assert (code, out) == (0, "")

        # A stale --expect-tail: one line naming it and the actual tail.
        code, _, err = await _run(
            tailrunner_cli,
            "append", *journal, "--type", "order", "--id", aggregate_id,
            "--event-type", "late", "--expect-tail", first_tail,
        )  # fmt: skip
        assert code != 0
        assert err.strip().splitlines() == [
            f"Error: --expect-tail {first_tail} is not the aggregate's tail, which is {second_tail}"
        ]

        # serve stops cleanly on SIGTERM.
        served.process.send_signal(signal.SIGTERM)
        with anyio.fail_after(15):
            assert await served.process.wait() == 0
    log = served.log.read_text()
    assert "listening" in log
    assert "stopped" in log


async def test_cli_append_expect_new_and_request_id(
    tailrunner_cli: list[str], serve_journal: ServeJournal
) -> None:
    aggregate_id = str(uuid4())
    async with serve_journal("memory:") as served:
        first = [
            "append", "--journal", served.address, "--type", "order", "--id", aggregate_id,
            "--event-type", "placed", "--expect-new", "--request-id", "place-1",
        ]  # fmt: skip
        code, tail, err = await _run(tailrunner_cli, *first)
        assert (code, err) == (0, "")
        tail = tail.strip()

        # A repeat of the request: nothing appended, the first tail printed
        # (its expect_new no longer holds, but the append already happened).
        code, again, err = await _run(tailrunner_cli, *first)
        assert (code, again.strip(), err) == (0, tail, "")

        # Another first append: refused, naming the option and the tail.
        code, out, err = await _run(tailrunner_cli, *first[:-2], "--request-id", "place-2")
        assert (code, out) == (1, "")
        assert err.strip().splitlines() == [
            f"Error: --expect-new: the aggregate already has events; its tail is {tail}"
        ]

        code, out, _ = await _run(
            tailrunner_cli, "events", "--journal", served.address, "--id", aggregate_id
        )
        assert code == 0
        assert out.splitlines() == [f"{tail}\tplaced\t"]


async def test_cli_serve_stops_cleanly_on_sigint(serve_journal: ServeJournal) -> None:
    async with serve_journal("memory:") as served:
        served.process.send_signal(signal.SIGINT)
        with anyio.fail_after(15):
            assert await served.process.wait() == 0
    assert "stopped" in served.log.read_text()


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--id", "not-a-uuid"], "'--id'"),
        (["--id", "{id}", "--expect-tail", "nope"], "'--expect-tail'"),
        (["--id", "{id}", "--data", "{not json"], "'--data'"),
        (["--id", "{id}", "--data", "@/no/such/file.json"], "'--data'"),
        (
            ["--id", "{id}", "--expect-new", "--expect-tail", "01J9Z3K4Q2V8X7W6T5R4P3N2M1"],
            "'--expect-new'",
        ),
        (["--id", "{id}", "--request-id", ""], "'--request-id'"),
    ],
)
async def test_cli_bad_input_is_a_clear_error_naming_it(
    tailrunner_cli: list[str], args: list[str], named: str
) -> None:
    args = [arg.replace("{id}", str(uuid4())) for arg in args]
    code, out, err = await _run(
        tailrunner_cli,
        "append", "--journal", "127.0.0.1:1", "--type", "order", "--event-type", "x", *args,
    )  # fmt: skip
    assert code == 2
    assert out == ""
    [error] = [line for line in err.splitlines() if line.startswith("Error:")]
    assert named in error


async def test_cli_store_that_cannot_be_opened_is_one_line_naming_path_and_reason(
    tailrunner_cli: list[str], tmp_path: Path
) -> None:
    path = tmp_path / "missing" / "journal.db"
    code, out, err = await _run(
        tailrunner_cli,
        "journal",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--store",
        f"sqlite:///{path}",
    )
    assert code != 0
    assert out == ""
    assert err.strip().splitlines() == [
        f"Error: cannot open the journal store {path}: unable to open database file"
    ]


async def test_cli_unknown_store_url_names_the_option_and_what_is_allowed(
    tailrunner_cli: list[str],
) -> None:
    code, _, err = await _run(
        tailrunner_cli, "journal", "serve", "--listen", "127.0.0.1:0", "--store", "mysql://db"
    )
    assert code == 2
    [error] = [line for line in err.splitlines() if line.startswith("Error:")]
    assert "'--store'" in error
    assert "sqlite:///" in error
    assert "memory:" in error


async def test_cli_unreachable_journal_is_one_line_naming_the_address(
    tailrunner_cli: list[str],
) -> None:
    code, _, err = await _run(tailrunner_cli, "aggregates", "--journal", "127.0.0.1:1")
    assert code == 1
    [line] = err.strip().splitlines()
    assert line.startswith("Error: cannot reach the journal at 127.0.0.1:1")
