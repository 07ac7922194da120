"""The kit plugin authors use, used the way they would: the README's examples, verbatim.

The python blocks of README.md's "Writing an activity" and "Testing an
activity" sections are read from README.md when the tests run, written out
as a plugin author's package (``myplugin/activities.py``, ``myplugin/hooks.py``)
and test module, and run by pytest in a subprocess of their own, as the
author would run them: the README's test is parametrized over the three
engines, so each engine's case must pass. The tests below those exercise
what the README does not show.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ulid import ULID

from tailrunner import EOF, ActivityContext, Done, EventStream, activity
from tailrunner.activities.builtin import counter
from tailrunner.activities.outcomes import Outcome
from tailrunner.config import ENGINE_KINDS
from tailrunner.model import AggregateRef, NewEvent
from tailrunner.operations import Operations
from tailrunner.operations.client import OperationsClient
from tailrunner.states import OutcomeKind
from tailrunner.testing import (
    ActivityRun,
    LoopbackJournal,
    activity_context,
    loopback_journal,
    make_events,
)

README = Path(__file__).parent.parent / "README.md"
WRITING = "Writing an activity"
TESTING = "Testing an activity"
#: The module the README's test imports the activity from.
ACTIVITIES_MODULE = Path("myplugin/activities.py")

#: Ours, not the README's: the README's hooks module registers its activity
#: beside the built-in ones (strict: no name clash), as `tailrunner run` loads it.
HOOKS_CHECK = """\
import myplugin.hooks
from myplugin.activities import counter
from tailrunner.plugins import load_plugins


def test_the_readme_hooks_module_registers_its_activity():
    plugins = load_plugins(strict=True, extra=[myplugin.hooks])
    assert plugins.activities[counter.name] is counter
"""

#: What the author's project would configure; as strict as this suite.
PYTEST_INI = """\
[pytest]
addopts = --strict-markers
filterwarnings = error
"""


@dataclass(frozen=True, slots=True)
class Block:
    """One fenced code block of the README, under its ``##`` section."""

    section: str
    lang: str
    code: str


@dataclass(frozen=True, slots=True)
class Case:
    """One test of the README's, as the subprocess's JUnit XML reports it."""

    module: str
    name: str
    #: ``None`` when it passed; else what failed (message and traceback).
    problem: str | None


def readme_blocks(text: str) -> list[Block]:
    """The fenced code blocks of a markdown text, each with its ``##`` section's title."""
    blocks: list[Block] = []
    section = ""
    fence: tuple[str, list[str]] | None = None
    for line in text.splitlines():
        if fence is not None:
            if line.startswith("```"):
                blocks.append(Block(section, fence[0], "\n".join(fence[1]) + "\n"))
                fence = None
            else:
                fence[1].append(line)
        elif line.startswith("```"):
            fence = (line[3:].strip(), [])
        elif line.startswith("## "):
            section = line[3:].strip()
    assert fence is None, "README.md: a code block is not closed"
    return blocks


def python_blocks(section: str) -> list[str]:
    found = [
        b.code
        for b in readme_blocks(README.read_text())
        if (b.section, b.lang) == (section, "python")
    ]
    assert found, f"README.md has no python block under ## {section}"
    return found


def named_path(code: str) -> Path | None:
    """The file a block names in its first line (``# myplugin/hooks.py``), if it does."""
    first = code.splitlines()[0]
    match = re.fullmatch(r"#\s*([\w/]+\.py)\s*", first)
    return Path(match.group(1)) if match else None


def write_readme_project(root: Path) -> None:
    """The README's plugin package and test module, as its author would have them."""
    (root / "myplugin").mkdir()
    (root / "myplugin" / "__init__.py").write_text("")
    unnamed = []
    for code in python_blocks(WRITING):
        path = named_path(code)
        if path is None:
            unnamed.append(code)
        else:
            (root / path).write_text(code)
    # The block that names no file is the activity the README's test imports.
    assert len(unnamed) == 1, f"## {WRITING}: expected one activity block, found {len(unnamed)}"
    (root / ACTIVITIES_MODULE).write_text(unnamed[0])
    for n, code in enumerate(python_blocks(TESTING)):
        (root / f"test_readme_{n}.py").write_text(code)
    (root / "test_hooks_check.py").write_text(HOOKS_CHECK)
    (root / "pytest.ini").write_text(PYTEST_INI)


def junit_cases(report: Path) -> list[Case]:
    cases = []
    for case in ET.parse(report).iter("testcase"):
        bad = [c for c in case if c.tag in ("failure", "error", "skipped")]
        problem = (
            "\n".join(f"{c.tag}: {c.get('message', '')}\n{c.text or ''}" for c in bad)
            if bad
            else None
        )
        cases.append(
            Case(module=case.get("classname", ""), name=case.get("name", ""), problem=problem)
        )
    return cases


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory: pytest.TempPathFactory) -> list[Case]:
    """Every test of the README's project, run once by pytest in a subprocess."""
    root = tmp_path_factory.mktemp("readme-project")
    write_readme_project(root)
    report = root / "report.xml"
    path = [str(root), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    env.pop("PYTEST_ADDOPTS", None)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}"],
        check=False,  # the report says what failed; the exit status alone would not
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        # Generous: a bound on a stuck run, not on how fast it is.
        timeout=600,
    )
    assert report.exists(), (
        f"pytest wrote no report (exit {done.returncode}):\n{done.stdout}{done.stderr}"
    )
    cases = junit_cases(report)
    assert cases, f"pytest ran no test of the README's:\n{done.stdout}"
    return cases


def readme_cases(cases: list[Case]) -> list[Case]:
    return [c for c in cases if c.module.startswith("test_readme_")]


def params(case: Case) -> set[str]:
    """The parameters in a test's id: ``t[asyncio-eager]`` → ``{"asyncio", "eager"}``."""
    _, bracket, rest = case.name.partition("[")
    return set(rest.removesuffix("]").split("-")) if bracket else set()


def failures(cases: list[Case]) -> str:
    return "\n\n".join(f"{c.module}::{c.name}\n{c.problem}" for c in cases if c.problem)


# --------------------------------------------------------------------------- the README, verbatim


@pytest.mark.parametrize("engine", ENGINE_KINDS)
def test_the_readme_test_passes_under_each_engine(readme_run: list[Case], engine: str) -> None:
    cases = [c for c in readme_cases(readme_run) if engine in params(c)]

    assert cases, f"no test of the README's ran under the {engine} engine"
    assert failures(cases) == ""


def test_the_readme_tests_without_an_engine_pass(readme_run: list[Case]) -> None:
    cases = [c for c in readme_cases(readme_run) if not params(c) & set(ENGINE_KINDS)]

    assert cases, "the README's test module has no test that calls the activity directly"
    assert failures(cases) == ""


def test_the_readme_hooks_register_the_readme_activity(readme_run: list[Case]) -> None:
    cases = [c for c in readme_run if c.module == "test_hooks_check"]

    assert [c.name for c in cases] == ["test_the_readme_hooks_module_registers_its_activity"]
    assert failures(cases) == ""


def test_readme_blocks_are_read_per_section() -> None:
    text = textwrap.dedent(
        """\
        ## One
        ```python
        a = 1
        ```
        ```toml
        b = 2
        ```
        ## Two
        ```python
        # pkg/mod.py
        c = 3
        ```
        """
    )

    blocks = readme_blocks(text)

    assert blocks == [
        Block("One", "python", "a = 1\n"),
        Block("One", "toml", "b = 2\n"),
        Block("Two", "python", "# pkg/mod.py\nc = 3\n"),
    ]
    assert [named_path(b.code) for b in blocks] == [None, None, Path("pkg/mod.py")]


# --------------------------------------------------------------------------- beyond the README


async def test_a_fake_stream_in_batches_of_one_reads_to_the_end_of_linked_events(
    fake_stream: Callable[..., EventStream],
) -> None:
    events = make_events([("hello", {"n": 1}), ("hello", {"n": 2})], aggregate_type="demo")
    assert events[1].parent == events[0].id and events[0].parent is None
    outcome = await counter(activity_context("counter"), None, fake_stream(events, batch_size=1))
    assert outcome == EOF(events[-1].id)


async def test_a_test_context_refuses_journal_use_with_a_clear_message() -> None:
    ctx = activity_context()
    with pytest.raises(RuntimeError, match="has no journal"):
        await ctx.journal.append(ctx.aggregate, [NewEvent(type="x")])


@pytest.mark.parametrize("engine", ENGINE_KINDS)
async def test_the_builtin_counter_runs_until_idle_under_every_engine(
    engine: str,
    tailrunner_journal: LoopbackJournal,
    run_activity: Callable[..., Awaitable[ActivityRun]],
) -> None:
    agg = AggregateRef(type="demo", id=uuid.uuid4())
    result = await tailrunner_journal.client.append(agg, [NewEvent(type="hello")] * 3)
    run = await run_activity(counter, aggregate=agg, engine=engine)
    assert run.tail == result.tail
    if engine != "eager":  # the eager counter never returns: it watches
        assert run.outcomes == [OutcomeKind.EOF]


async def test_run_activity_reports_done_and_errors(
    tailrunner_journal: LoopbackJournal,
    run_activity: Callable[..., Awaitable[ActivityRun]],
) -> None:
    agg = AggregateRef(type="demo", id=uuid.uuid4())
    await tailrunner_journal.client.append(agg, [NewEvent(type="hello")])
    calls: list[Any] = []

    @activity(name="flaky", aggregate_types=["demo"])
    async def flaky(ctx: ActivityContext, tail: ULID | None, stream: EventStream) -> Outcome:
        calls.append(tail)
        async for event in stream:
            tail = event.id
        if len(calls) == 1:
            raise ValueError("first time")
        return Done(tail)

    failed = await run_activity(flaky, aggregate=agg)
    assert failed.outcomes == [OutcomeKind.ERROR]
    assert "first time" in (failed.results[0].error_text or "")
    done = await run_activity(flaky, aggregate=agg, stop_on_retry=False)
    assert done.outcomes == [OutcomeKind.DONE]


async def test_the_loopback_journal_serves_operations_as_journal_serve_does() -> None:
    async with loopback_journal() as journal:
        created = await Operations(journal.client).create()
        async with OperationsClient.connect(journal.address) as client:
            assert (await client.get(created.name)).name == created.name


def test_an_activity_context_logs_bound_to_its_activity_and_aggregate() -> None:
    from structlog.testing import capture_logs

    from tailrunner.model import AggregateRef
    from tailrunner.testing import activity_context

    aggregate = AggregateRef(type="order", id=uuid.uuid4())
    ctx = activity_context("shipper", aggregate=aggregate, engine="cron")
    with capture_logs() as lines:
        ctx.log.info("shipped", parcel=3)
        ctx.log.warning("late")
    assert [(line["event"], line["activity"], line["aggregate_id"]) for line in lines] == [
        ("shipped", "shipper", str(aggregate.id)),
        ("late", "shipper", str(aggregate.id)),
    ]
    assert lines[0]["aggregate_type"] == "order" and lines[0]["engine"] == "cron"
    assert lines[0]["parcel"] == 3
