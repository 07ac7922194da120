"""Real processes for end-to-end tests: a pip-installed plugin, the journal, runners."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

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
import os

from tailrunner import EOF, activity
from tailrunner.plugins import hookimpl


@activity(name="recorder", aggregate_types=["e2e"])
async def recorder(ctx, tail, stream):
    record = os.environ.get("E2E_RECORD")
    async for batch in stream.batches():
        for event in batch.events:
            if record:
                # The side effect, done before the checkpoint: at-least-once.
                with open(record, "a") as out:
                    out.write(f"{event.id}\\n")
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


def build_plugin(
    tmp_path_factory: pytest.TempPathFactory,
    *,
    project: str,
    package: str,
    hooks: str,
    plugin: str,
) -> Path:
    """Plugin ``plugin`` (entry point group ``tailrunner``, module ``package.hooks``),
    built and installed with pip into a target folder of its own; that folder."""
    src = tmp_path_factory.mktemp(f"{project}-src")
    pyproject = (
        PLUGIN_PYPROJECT.replace("e2e-recorder", project)
        .replace("e2e_recorder", package)
        .replace("e2e = ", f"{plugin} = ")
    )
    (src / "pyproject.toml").write_text(pyproject)
    (src / package).mkdir()
    (src / package / "__init__.py").write_text("")
    (src / package / "hooks.py").write_text(hooks)
    site = tmp_path_factory.mktemp(f"{project}-site")
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
    assert list(site.glob(f"{package}-1.0.dist-info")), "pip installed no dist-info"
    return site


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The recorder plugin, built and installed with pip into its own target folder."""
    return build_plugin(
        tmp_path_factory,
        project="e2e-recorder",
        package="e2e_recorder",
        hooks=PLUGIN_HOOKS,
        plugin="e2e",
    )


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

    def __init__(
        self,
        config: Path,
        engine: str,
        plugin_site: Path,
        *,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(plugin_site), env.get("PYTHONPATH", "")])
        env["TAILRUNNER_ENGINE__KIND"] = engine
        env.update(extra_env or {})
        self.proc = subprocess.Popen(
            [TAILRUNNER, "run", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.recorded: list[str] = []
        self.admin: str | None = None
        self.metrics: str | None = None
        #: What it printed that is not a log line (start-up errors, tracebacks).
        self.other: list[str] = []

    def lines(self) -> Iterator[dict[str, object]]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("admin on "):
                self.admin = line.removeprefix("admin on ").strip()
            elif line.startswith("metrics on "):
                self.metrics = line.removeprefix("metrics on ").strip()
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                self.other.append(line.rstrip())

    def wait_started(self) -> None:
        """Read until the runner has printed its admin and metrics addresses."""
        for _ in self.lines():
            if self.admin is not None and self.metrics is not None:
                return
        raise AssertionError(
            f"runner exited (code {self.proc.poll()}) before it started: {self.other[-5:]}"
        )

    def wait_any_recorded(self) -> str:
        """Read log lines until the runner records an event; return its id."""
        for entry in self.lines():
            if entry.get("event") == "recorded":
                self.recorded.append(str(entry["event_id"]))
                return self.recorded[-1]
        raise AssertionError(f"runner exited (code {self.proc.poll()}) before recording anything")

    def wait_recorded(self, event_ids: list[str], *, since: int = 0) -> None:
        """Read log lines until each of ``event_ids`` was recorded at ``since`` or later."""
        missing = set(event_ids) - set(self.recorded[since:])
        if not missing:
            return
        for entry in self.lines():
            if entry.get("event") == "recorded":
                self.recorded.append(str(entry["event_id"]))
                missing.discard(str(entry["event_id"]))
                if not missing:
                    return
        raise AssertionError(f"runner exited (code {self.proc.poll()}) before recording {missing}")

    def kill(self) -> None:
        """SIGKILL: no chance to flush or say goodbye."""
        self.proc.kill()
        self.proc.communicate(timeout=15)

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
