"""End to end: someone else's plugin package, installed with pip, under each engine.

Everything here is a real process: the journal server, the runner, the CLI
that appends. The plugin is built from a temporary directory and installed
with pip into a target folder that only the runner's PYTHONPATH sees.
"""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import pytest

from .conftest import Journal, Runner

pytestmark = pytest.mark.slow


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
            # Back within half a second of the journal's restart (the default
            # backoff grows to 5 s while it is down).
            reconnect_initial = "50ms"
            reconnect_max_delay = "500ms"

            [engine]
            interval = "100ms"
            discovery_interval = "200ms"

            [retry]
            initial = "50ms"
            max_delay = "500ms"

            [tails]
            store = "sqlite:///tails.db"

            [admin]
            listen = "127.0.0.1:0"

            [metrics]
            listen = "127.0.0.1:0"

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
