"""TLS and tokens end to end, as an operator sets them up: ``journal serve`` with a
certificate and a tokens file, the CLI with ``--tls-ca`` and a token in the
environment, and ``tailrunner run`` whose config reaches the journal over TLS
and serves its admin and metrics over TLS with tokens.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .certs import Certs
from .conftest import READ_TOKEN, WRITE_TOKEN

pytestmark = pytest.mark.slow

TAILRUNNER = str(Path(sys.executable).parent / "tailrunner")


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: PLW1510  # the tests read the exit code
        [TAILRUNNER, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def journal(certs: Certs, tokens_file: Path, tmp_path: Path) -> Iterator[str]:
    proc = subprocess.Popen(
        [
            TAILRUNNER,
            "journal",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            f"sqlite:///{tmp_path / 'journal.db'}",
            "--tls-cert",
            str(certs.server_cert),
            "--tls-key",
            str(certs.server_key),
            "--tokens-file",
            str(tokens_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("listening on "), proc.stderr.read() if proc.stderr else line
    try:
        yield line.removeprefix("listening on ").strip()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0
        for secret in (READ_TOKEN, WRITE_TOKEN):
            assert secret not in err, "a token reached the journal's log"


def test_the_cli_appends_and_reads_over_tls_with_its_tokens(journal: str, certs: Certs) -> None:
    aggregate = str(uuid.uuid4())
    tls = ["--journal", journal, "--tls-ca", str(certs.ca)]
    append = ["append", *tls, "--type", "t", "--id", aggregate, "--event-type", "e"]

    written = run_cli(*append, env={"TAILRUNNER_JOURNAL_TOKEN": WRITE_TOKEN})
    assert written.returncode == 0, written.stderr
    read = run_cli("events", *tls, "--id", aggregate, "--json",
                   env={"TAILRUNNER_JOURNAL_TOKEN": READ_TOKEN})  # fmt: skip
    assert read.returncode == 0, read.stderr
    assert [json.loads(line)["id"] for line in read.stdout.splitlines()] == [written.stdout.strip()]

    denied = run_cli(*append, env={"TAILRUNNER_JOURNAL_TOKEN": READ_TOKEN})
    assert denied.returncode != 0
    assert "may only read" in denied.stderr and READ_TOKEN not in denied.stderr
    missing = run_cli(*append, env={"TAILRUNNER_JOURNAL_TOKEN": ""})
    assert missing.returncode != 0 and "set $TAILRUNNER_JOURNAL_TOKEN" in missing.stderr
    untrusted = run_cli(
        "events", "--journal", journal, "--tls-ca", str(certs.other_ca), "--id", aggregate,
        env={"TAILRUNNER_JOURNAL_TOKEN": READ_TOKEN},
    )  # fmt: skip
    assert untrusted.returncode != 0 and "cannot reach the journal" in untrusted.stderr


def test_journal_serve_refuses_an_open_address_without_tls_and_tokens(tmp_path: Path) -> None:
    refused = run_cli(
        "journal", "serve", "--listen", "0.0.0.0:0", "--store", "memory:",
    )  # fmt: skip
    assert refused.returncode != 0
    assert "0.0.0.0:0" in refused.stderr and "without TLS and without tokens" in refused.stderr
    assert "Traceback" not in refused.stderr


def _runner_config(tmp_path: Path, **sections: dict[str, str]) -> Path:
    """A runner config that runs the counter on SQLite tails, plus ``sections``' keys
    (admin on any free loopback port and no metrics unless they say otherwise)."""
    tables: dict[str, dict[str, str]] = {
        "activities": {},
        "tails": {"store": f"sqlite:///{tmp_path / 'tails.db'}"},
        "admin": {"listen": "127.0.0.1:0"},
        "metrics": {"listen": ""},
    }
    for name, keys in sections.items():
        tables.setdefault(name, {}).update(keys)
    lines = []
    for name, keys in tables.items():
        lines.append(f"[{name}]")
        if name == "activities":
            lines.append('enabled = ["counter"]')
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in keys.items())
    config = tmp_path / "runner.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


def test_a_runner_over_tls_with_tokens_on_every_server(
    journal: str, certs: Certs, tokens_file: Path, tmp_path: Path
) -> None:
    server_tls = {"tls_cert": str(certs.server_cert), "tls_key": str(certs.server_key)}
    config = _runner_config(
        tmp_path,
        journal={"address": journal, "tls_ca": str(certs.ca), "keepalive": "2s"},
        admin={"listen": "127.0.0.1:0", "tokens_file": str(tokens_file), **server_tls},
        metrics={"listen": "127.0.0.1:0", **server_tls},
        log={"format": "json"},
    )
    env = {**os.environ, "TAILRUNNER_JOURNAL_TOKEN": WRITE_TOKEN, "TAILRUNNER_ADMIN_TOKEN": ""}
    proc = subprocess.Popen(
        [TAILRUNNER, "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    admin = metrics = None
    seen: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("admin on "):
                admin = line.removeprefix("admin on ").strip()
            if line.startswith("metrics on "):
                metrics = line.removeprefix("metrics on ").strip()
            if admin and metrics:
                break
        assert admin and metrics, "".join(seen[-10:])
        assert metrics.startswith("https://")

        tls = ["--admin", admin, "--tls-ca", str(certs.ca)]
        status = run_cli("status", *tls, "--json", env={"TAILRUNNER_ADMIN_TOKEN": READ_TOKEN})
        assert status.returncode == 0, status.stderr
        plain = run_cli("status", "--admin", admin, env={"TAILRUNNER_ADMIN_TOKEN": READ_TOKEN})
        assert plain.returncode != 0

        context = ssl.create_default_context(cafile=str(certs.ca))
        request = urllib.request.Request(metrics, headers={"Authorization": f"Bearer {READ_TOKEN}"})
        with urllib.request.urlopen(request, context=context, timeout=20) as reply:
            assert b"tailrunner_" in reply.read()
        with pytest.raises(urllib.error.HTTPError) as unauthorized:
            urllib.request.urlopen(metrics, context=context, timeout=20)
        unauthorized.value.close()
        assert unauthorized.value.code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
    log = "".join(seen) + rest
    assert proc.returncode == 0, log[-2000:]
    for secret in (READ_TOKEN, WRITE_TOKEN):
        assert secret not in log, "a token reached the runner's log"


def test_a_runner_refuses_an_open_admin_address_without_tls(tmp_path: Path) -> None:
    config = _runner_config(tmp_path, admin={"listen": "0.0.0.0:0"})
    refused = run_cli("run", "--config", str(config), env={"TAILRUNNER_ADMIN_TOKEN": ""})
    assert refused.returncode != 0
    assert "admin server would listen on 0.0.0.0:0" in refused.stderr + refused.stdout


@pytest.mark.parametrize("token", ["", "not-the-journals-token-at-all"], ids=["none", "unknown"])
def test_a_runner_the_journal_refuses_stops_at_start_and_says_which_variable(
    journal: str, certs: Certs, tmp_path: Path, token: str
) -> None:
    config = _runner_config(tmp_path, journal={"address": journal, "tls_ca": str(certs.ca)})
    refused = run_cli(
        "run", "--config", str(config),
        env={"TAILRUNNER_JOURNAL_TOKEN": token, "TAILRUNNER_ADMIN_TOKEN": ""},
    )  # fmt: skip
    assert refused.returncode != 0
    assert f"the journal at {journal} refused the runner" in refused.stderr
    assert "$TAILRUNNER_JOURNAL_TOKEN" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not token or token not in refused.stderr


def test_a_runner_refuses_open_metrics_before_it_starts_in_one_line(tmp_path: Path) -> None:
    refused = run_cli(
        "run", "--config", str(_runner_config(tmp_path, metrics={"listen": "0.0.0.0:0"})),
        env={"TAILRUNNER_ADMIN_TOKEN": ""},
    )  # fmt: skip
    assert refused.returncode != 0
    assert "metrics server would listen on 0.0.0.0:0" in refused.stderr
    assert "metrics.insecure = true" in refused.stderr
    assert "Traceback" not in refused.stderr + refused.stdout
    assert "runner starting" not in refused.stderr + refused.stdout


def test_metrics_on_a_taken_port_is_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused = run_cli(
            "run", "--config",
            str(_runner_config(tmp_path, metrics={"listen": f"127.0.0.1:{port}"})),
            env={"TAILRUNNER_ADMIN_TOKEN": ""},
        )  # fmt: skip
    assert refused.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in refused.stderr
    assert "Traceback" not in refused.stderr + refused.stdout


def test_ops_serve_keeps_its_own_tls_apart_from_the_journals(
    journal: str, certs: Certs, tokens_file: Path
) -> None:
    """--tls-* reach the journal, --serve-tls-* guard the operations server: both at once."""
    proc = subprocess.Popen(
        [
            TAILRUNNER, "ops", "serve", "--journal", journal, "--listen", "127.0.0.1:0",
            "--tls-ca", str(certs.ca),
            "--serve-tls-cert", str(certs.server_cert), "--serve-tls-key", str(certs.server_key),
            "--tokens-file", str(tokens_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TAILRUNNER_JOURNAL_TOKEN": WRITE_TOKEN},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on "), proc.stderr.read() if proc.stderr else line
        ops = line.removeprefix("listening on ").strip()
        listed = run_cli(
            "ops", "list", "--journal", ops, "--tls-ca", str(certs.ca),
            env={"TAILRUNNER_JOURNAL_TOKEN": READ_TOKEN},
        )  # fmt: skip
        assert listed.returncode == 0, listed.stderr
        plain = run_cli(
            "ops", "list", "--journal", ops, env={"TAILRUNNER_JOURNAL_TOKEN": READ_TOKEN}
        )
        assert plain.returncode != 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)


def test_a_token_with_a_line_end_works_and_one_with_bad_characters_is_named(
    journal: str, certs: Certs
) -> None:
    tls = ["--journal", journal, "--tls-ca", str(certs.ca)]
    ok = run_cli("aggregates", *tls, env={"TAILRUNNER_JOURNAL_TOKEN": READ_TOKEN + "\n"})
    assert ok.returncode == 0, ok.stderr
    bad = run_cli("aggregates", *tls, env={"TAILRUNNER_JOURNAL_TOKEN": READ_TOKEN + "\u00e9"})
    assert bad.returncode != 0
    assert "$TAILRUNNER_JOURNAL_TOKEN holds characters" in bad.stderr
    assert READ_TOKEN not in bad.stderr and "Traceback" not in bad.stderr
