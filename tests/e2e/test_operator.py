"""An operator at work on a real runner process: status, stop, resume, restart, metrics.

Each step is the CLI as an operator types it, against a runner started with
`tailrunner run` (SQLite tails), with a bearer token from the environment.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from .conftest import TAILRUNNER, Journal, Runner

pytestmark = pytest.mark.slow

TOKEN = "s3cret-operator-token"


def cli(*args: str, admin: str, token: str | None = TOKEN, check: bool = True) -> str:
    env = dict(os.environ)
    env.pop("TAILRUNNER_ADMIN_TOKEN", None)
    if token is not None:
        env["TAILRUNNER_ADMIN_TOKEN"] = token
    done = subprocess.run(
        [TAILRUNNER, *args, "--admin", admin],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def task(admin: str, aggregate: uuid.UUID) -> dict[str, Any]:
    out = cli("task", "show", "recorder", str(aggregate), "--json", admin=admin)
    return dict(json.loads(out.splitlines()[0]))


def lag_metric(url: str) -> float:
    # The runner has a token: a scrape carries it too (any role reads).
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        text = response.read().decode()
    match = re.search(r'^tailrunner_lag_events\{activity="recorder"\} (\S+)$', text, re.M)
    assert match, "no lag metric for the recorder"
    return float(match.group(1))


def test_operator_stops_resumes_and_restarts_a_task_through_the_cli(
    plugin_site: Path, tmp_path: Path
) -> None:
    journal = Journal(tmp_path / "journal.db")
    config = tmp_path / "runner.toml"
    config.write_text(
        textwrap.dedent(
            f"""\
            [journal]
            address = "{journal.address}"

            [engine]
            kind = "lazy"
            discovery_interval = "200ms"

            [tails]
            store = "sqlite:///tails.db"

            [admin]
            listen = "127.0.0.1:0"

            [metrics]
            listen = "127.0.0.1:0"
            lag_interval = "0s"

            [log]
            format = "json"
            """
        )
    )
    aggregate = uuid.uuid4()
    journal.start()
    runner = Runner(config, "lazy", plugin_site, extra_env={"TAILRUNNER_ADMIN_TOKEN": TOKEN})
    try:
        runner.wait_started()
        assert runner.admin is not None and runner.metrics is not None
        admin = runner.admin
        first = [journal.append(aggregate, n) for n in range(3)]
        runner.wait_recorded(first)

        refused = cli("status", admin=admin, token=None, check=False)
        assert "UNAUTHENTICATED" in refused or "token" in refused.lower()

        shown = task(admin, aggregate)
        assert (shown["tail"], shown["lag"]) == (first[-1], 0)

        cli("task", "stop", "recorder", str(aggregate), admin=admin)
        assert task(admin, aggregate)["state"] == "STOPPED"
        held = [journal.append(aggregate, n) for n in range(3, 5)]
        stopped = task(admin, aggregate)
        assert (stopped["state"], stopped["lag"]) == ("STOPPED", 2), "a stopped task falls behind"
        assert lag_metric(runner.metrics) == 2
        status = cli("status", "--state", "stopped", "--json", admin=admin)
        assert [json.loads(line)["aggregate_id"] for line in status.splitlines()] == [
            str(aggregate)
        ]

        cli("task", "resume", "recorder", str(aggregate), admin=admin)
        runner.wait_recorded(held)
        assert task(admin, aggregate)["lag"] == 0

        replay_from = len(runner.recorded)
        cli("task", "restart", "recorder", str(aggregate), "--from-start", admin=admin)
        runner.wait_recorded(first + held, since=replay_from)
        assert runner.recorded[replay_from:] == first + held, "replayed from the first event"
        assert task(admin, aggregate)["lag"] == 0
        assert lag_metric(runner.metrics) == 0, "the scrape shows the lag back at zero"
    finally:
        if runner.proc.poll() is None:
            assert runner.stop() == 0
        journal.stop()
