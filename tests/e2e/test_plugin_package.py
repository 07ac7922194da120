"""End to end: someone else's plugin package, installed with pip, under each engine.

Everything here is a real process: the journal server, the runner, the CLI
that appends. The plugin is built from a temporary directory and installed
with pip into a target folder that only the runner's PYTHONPATH sees.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
TAILRUNNER = shutil.which("tailrunner", path=str(BIN)) or str(BIN / "tailrunner")

PLUGIN_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "e2e-recorder"
version = "1.0"

[project.entry-points.tailrunner]
e2e = "e2e_recorder.hooks"

[tool.hatch.build.targets.wheel]
packages = ["e2e_recorder"]
"""

PLUGIN_HOOKS = '''\
"""A plugin written by someone else: it records every event it handles."""

import json

from tailrunner import EOF, activity
from tailrunner.plugins import hookimpl


@activity(name="recorder", aggregate_types=["e2e"])
async def recorder(ctx, tail, stream):
    async for batch in stream.batches():
        for event in batch.events:
            ctx.log.info("recorded", event_id=str(event.id), payload=json.loads(event.data))
            tail = event.id
            await ctx.checkpoint(tail)
        if batch.will_block:
            break
    return EOF(tail)


@hookimpl
def tailrunner_activities():
    return [recorder]
'''


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin, built and installed with pip into its own target folder."""
    src = tmp_path_factory.mktemp("plugin-src")
    (src / "pyproject.toml").write_text(PLUGIN_PYPROJECT)
    (src / "e2e_recorder").mkdir()
    (src / "e2e_recorder" / "__init__.py").write_text("")
    (src / "e2e_recorder" / "hooks.py").write_text(PLUGIN_HOOKS)
    site = tmp_path_factory.mktemp("plugin-site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(src),
        ],
        check=True,
    )
    assert list(site.glob("e2e_recorder-1.0.dist-info")), "pip installed no dist-info"
    return site


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Journal:
    """``tailrunner journal serve`` on a fixed port, restartable on the same file."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                TAILRUNNER,
                "journal",
                "serve",
                "--listen",
                self.address,
                "--store",
                f"sqlite:///{self.db}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("listening on"), f"journal did not start: {line!r}"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.communicate(timeout=10)
            assert self.proc.returncode == 0, "the journal stops cleanly on SIGTERM"
            self.proc = None

    def append(self, aggregate: uuid.UUID, n: int) -> str:
        out = subprocess.run(
            [
                TAILRUNNER,
                "append",
                "--journal",
                self.address,
                "--type",
                "e2e",
                "--id",
                str(aggregate),
                "--event-type",
                "tick",
                "--data",
                json.dumps({"n": n}),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip()


class Runner:
    """``tailrunner run`` as a subprocess; its JSON log lines are read as they come."""

    def __init__(self, config: Path, engine: str, plugin_site: Path) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(plugin_site), env.get("PYTHONPATH", "")])
        env["TAILRUNNER_ENGINE__KIND"] = engine
        self.proc = subprocess.Popen(
            [TAILRUNNER, "run", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.recorded: list[str] = []

    def lines(self) -> Iterator[dict[str, object]]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue  # not a log line (a traceback would fail the wait below)

    def wait_recorded(self, event_ids: list[str]) -> None:
        """Read log lines until every id in ``event_ids`` was recorded."""
        missing = set(event_ids) - set(self.recorded)
        for entry in self.lines():
            if entry.get("event") == "recorded":
                self.recorded.append(str(entry["event_id"]))
                missing.discard(str(entry["event_id"]))
                if not missing:
                    return
        raise AssertionError(f"runner exited (code {self.proc.poll()}) before recording {missing}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        rest, _ = self.proc.communicate(timeout=15)
        for line in rest.splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if entry.get("event") == "recorded":
                self.recorded.append(str(entry["event_id"]))
        return self.proc.returncode


@pytest.mark.parametrize("engine", ["lazy", "eager", "cron"])
def test_installed_plugin_runs_resumes_and_survives_a_journal_restart(
    engine: str, plugin_site: Path, tmp_path: Path
) -> None:
    journal = Journal(tmp_path / "journal.db")
    config = tmp_path / "runner.toml"
    config.write_text(
        textwrap.dedent(
            f"""\
            [journal]
            address = "{journal.address}"

            [engine]
            interval = "100ms"
            discovery_interval = "200ms"

            [retry]
            initial = "50ms"
            max_delay = "500ms"

            [tails]
            store = "sqlite:///tails.db"

            [log]
            format = "json"
            level = "info"

            [plugins]
            strict = true
            """
        )
    )
    aggregate = uuid.uuid4()
    journal.start()
    runner: Runner | None = None
    try:
        first = [journal.append(aggregate, n) for n in range(3)]
        runner = Runner(config, engine, plugin_site)
        runner.wait_recorded(first)

        # The journal goes away and comes back on the same file and port.
        journal.stop()
        journal.start()
        second = [journal.append(aggregate, n) for n in range(3, 5)]
        runner.wait_recorded(second)
        assert runner.stop() == 0, "the runner stops cleanly on SIGTERM"
        before_restart = list(runner.recorded)

        # A new runner resumes from the stored tails: nothing before is replayed.
        third = [journal.append(aggregate, 5)]
        runner = Runner(config, engine, plugin_site)
        runner.wait_recorded(third)
        assert runner.recorded == third, "resumed after the stored tail, replaying nothing"
        assert sorted(set(before_restart)) == sorted(first + second)
        assert before_restart[: len(first)] == first, "in order"
    finally:
        if runner is not None and runner.proc.poll() is None:
            runner.stop()
        journal.stop()
