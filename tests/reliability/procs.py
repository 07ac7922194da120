"""Processes and load for the reliability tests: a killable journal, a runner, an appender.

Built on ``tests/e2e/conftest.py`` (the journal process, the recorder plugin)
with what a soak needs besides: SIGKILL of the journal, a runner whose output
is drained by a thread (a runner that lives long under load would otherwise
block on a full pipe), and an appender that retries each append with its
request id until the journal acknowledges it.
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import textwrap
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from ulid import ULID

from tailrunner.proto.v1 import journal_pb2, journal_pb2_grpc, runner_pb2, runner_pb2_grpc
from tests.e2e.conftest import TAILRUNNER, Journal

#: The aggregate type the recorder plugin follows.
AGGREGATE_TYPE = "e2e"
#: Retryable codes around a journal that is being killed and restarted.
TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

#: Channel options: reconnect to a restarted journal at once, not after gRPC's 1 s-120 s backoff.
FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 250),
]


def seeded(env_var: str) -> tuple[int, random.Random]:
    """A seed (from ``env_var``, else fresh), printed so that a failing run can be repeated."""
    raw = os.environ.get(env_var)
    seed = int(raw) if raw else random.randrange(2**32)
    print(f"seed {seed} (repeat with {env_var}={seed})")
    return seed, random.Random(seed)


class KillableJournal(Journal):
    """The e2e journal process, which can also be SIGKILLed and started again on its file."""

    def __init__(self, db: Path, extra_args: Sequence[str] = ()) -> None:
        super().__init__(db)
        self.extra_args = tuple(extra_args)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.communicate(timeout=15)
        self.proc = None

    def start(self) -> None:
        # A port just freed by a killed journal may still be taken for a moment.
        for attempt in range(50):
            self.proc = subprocess.Popen(
                [
                    TAILRUNNER,
                    "journal",
                    "serve",
                    "--listen",
                    self.address,
                    "--store",
                    f"sqlite:///{self.db}",
                    *self.extra_args,
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            assert self.proc.stdout is not None
            if self.proc.stdout.readline().startswith("listening on"):
                return
            self.proc.kill()
            self.proc.communicate(timeout=15)
            self.proc = None
            assert attempt < 49, "the journal did not start"
            time.sleep(0.1)


def runner_config(
    path: Path,
    *,
    journal: str,
    tails: str = "sqlite:///tails.db",
    engine: Mapping[str, str] | None = None,
    journal_keys: Mapping[str, str] | None = None,
    retry_max_delay: str = "500ms",
) -> Path:
    """A runner config file at ``path`` with short intervals for tests."""
    engine_keys = {"discovery_interval": "200ms", "interval": "200ms", **(engine or {})}
    journal_extra = {"reconnect_initial": "50ms", "reconnect_max_delay": "500ms"}
    journal_extra.update(journal_keys or {})
    engine_lines = "\n".join(f'{k} = "{v}"' for k, v in engine_keys.items())
    journal_lines = "\n".join(f'{k} = "{v}"' for k, v in journal_extra.items())
    path.write_text(
        textwrap.dedent(
            """\
            [journal]
            address = "{journal}"
            {journal_lines}

            [engine]
            {engine_lines}

            [retry]
            initial = "50ms"
            max_delay = "{retry_max_delay}"

            [tails]
            store = "{tails}"

            [admin]
            listen = "127.0.0.1:0"

            [metrics]
            listen = ""

            [log]
            format = "json"
            """
        ).format(
            journal=journal,
            journal_lines=journal_lines,
            engine_lines=engine_lines,
            retry_max_delay=retry_max_delay,
            tails=tails,
        )
    )
    return path


class RunnerProcess:
    """``tailrunner run`` whose output a thread drains; it keeps the last lines for errors."""

    def __init__(
        self, config: Path, engine: str, plugin_site: Path, extra_env: Mapping[str, str]
    ) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(plugin_site), env.get("PYTHONPATH", "")])
        env["TAILRUNNER_ENGINE__KIND"] = engine
        env.update(extra_env)
        self.proc = subprocess.Popen(
            [TAILRUNNER, "run", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.admin: str | None = None
        self.started = threading.Event()
        self.tail_lines: collections.deque[str] = collections.deque(maxlen=40)
        self._drain = threading.Thread(target=self._read, daemon=True)
        self._drain.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.tail_lines.append(line.rstrip())
            if line.startswith("admin on "):
                self.admin = line.removeprefix("admin on ").strip()
                self.started.set()

    def wait_started(self, timeout: float = 60.0) -> str:
        if not self.started.wait(timeout) or self.admin is None:
            raise AssertionError(
                f"runner did not start (code {self.proc.poll()}): {list(self.tail_lines)[-10:]}"
            )
        return self.admin

    def kill(self) -> None:
        """SIGKILL: no chance to flush or say goodbye."""
        self.proc.kill()
        self.proc.wait(timeout=15)
        self._close()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        self._close()
        return code

    def _close(self) -> None:
        self._drain.join(timeout=15)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def errors(self) -> list[str]:
        """The last lines it printed at level error (or that are no JSON log line)."""
        found = []
        for line in self.tail_lines:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                found.append(line)
                continue
            if isinstance(entry, dict) and entry.get("level") in ("error", "critical"):
                found.append(line)
        return found


@dataclass
class AppendFailure:
    request_id: str
    code: grpc.StatusCode
    details: str


class Appender:
    """Appends one event at a time from a thread, each with a request id of its own.

    An append that fails with UNAVAILABLE or DEADLINE_EXCEEDED (the journal
    was killed, or is starting) is sent again with the same request id until
    it is acknowledged: the journal must append it once, however many tries
    reach it. The payload carries the request id, so the journal's events can
    be counted per request.
    """

    def __init__(
        self,
        address: str,
        aggregates: list[uuid.UUID],
        rng: random.Random,
        *,
        pause: float = 0.01,
        call_timeout: float = 2.0,
    ) -> None:
        self._address = address
        self._channel = grpc.insecure_channel(address, options=FAST_RECONNECT)
        self._stub = journal_pb2_grpc.JournalStub(self._channel)
        self._aggregates = aggregates
        self._rng = random.Random(rng.random())
        self._pause = pause
        self._call_timeout = call_timeout
        #: request id → (aggregate, the event id the journal acknowledged).
        self.acked: dict[str, tuple[uuid.UUID, str]] = {}
        #: Tries sent again after a transient failure.
        self.retries = 0
        #: Failures that were not transient: each one fails the test.
        self.failures: list[AppendFailure] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="appender", daemon=True)

    def start(self) -> Appender:
        self._thread.start()
        return self

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            aggregate = self._rng.choice(self._aggregates)
            request_id = f"soak-{n}-{uuid.uuid4().hex}"
            self._append_until_acked(aggregate, request_id, n)
            time.sleep(self._rng.uniform(0, 2 * self._pause))

    def _append_until_acked(self, aggregate: uuid.UUID, request_id: str, n: int) -> None:
        request = journal_pb2.AppendRequest(
            aggregate_type=AGGREGATE_TYPE,
            aggregate_id=aggregate.bytes,
            request_id=request_id,
            events=[
                journal_pb2.NewEvent(
                    type="tick", data=json.dumps({"n": n, "rid": request_id}).encode()
                )
            ],
        )
        # Once sent, an append is retried even after stop(): it may have landed.
        while True:
            try:
                response = self._stub.Append(request, timeout=self._call_timeout)
            except grpc.RpcError as exc:
                code = exc.code()
                if code in TRANSIENT:
                    self.retries += 1
                    time.sleep(0.05)
                    continue
                self.failures.append(AppendFailure(request_id, code, exc.details() or ""))
                return
            self.acked[request_id] = (aggregate, str(ULID.from_bytes(response.tail)))
            return

    def repeat(self, request_ids: Iterable[str]) -> dict[str, tuple[str, str]]:
        """Send acknowledged appends again (after the thread stopped); the answers that differ.

        Request id → (the event id first acknowledged, the one the repeat got).
        """
        differ: dict[str, tuple[str, str]] = {}
        with grpc.insecure_channel(self._address, options=FAST_RECONNECT) as channel:
            stub = journal_pb2_grpc.JournalStub(channel)
            for request_id in request_ids:
                aggregate, event_id = self.acked[request_id]
                request = journal_pb2.AppendRequest(
                    aggregate_type=AGGREGATE_TYPE,
                    aggregate_id=aggregate.bytes,
                    request_id=request_id,
                    events=[journal_pb2.NewEvent(type="tick", data=b'{"repeat": true}')],
                )
                response = stub.Append(request, timeout=30, wait_for_ready=True)
                again = str(ULID.from_bytes(response.tail))
                if again != event_id:
                    differ[request_id] = (event_id, again)
        return differ

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=120)
        assert not self._thread.is_alive(), "the appender did not get its last append acknowledged"
        self._channel.close()


@dataclass(frozen=True)
class StoredEvent:
    aggregate: uuid.UUID
    event_id: str
    request_id: str | None


def read_events(address: str, aggregates: Iterable[uuid.UUID]) -> list[StoredEvent]:
    """Every event of ``aggregates`` as the journal has it, read without watching."""
    events: list[StoredEvent] = []
    with grpc.insecure_channel(address) as channel:
        stub = journal_pb2_grpc.JournalStub(channel)
        for aggregate in aggregates:
            request = journal_pb2.EventsRequest(aggregate_id=aggregate.bytes, watch=False)
            for batch in stub.Events(request, timeout=60):
                for event in batch.events:
                    payload = json.loads(event.data) if event.data else {}
                    events.append(
                        StoredEvent(
                            aggregate=aggregate,
                            event_id=str(ULID.from_bytes(event.id)),
                            request_id=payload.get("rid"),
                        )
                    )
    return events


def heads(address: str) -> dict[str, str]:
    """Aggregate id (text) → its head (ULID text), from the journal's ListAggregates."""
    found: dict[str, str] = {}
    with grpc.insecure_channel(address) as channel:
        stub = journal_pb2_grpc.JournalStub(channel)
        token = ""
        while True:
            page = stub.ListAggregates(
                journal_pb2.ListAggregatesRequest(page_token=token, page_size=1000), timeout=30
            )
            for aggregate in page.aggregates:
                found[str(uuid.UUID(bytes=aggregate.id))] = str(ULID.from_bytes(aggregate.head))
            token = page.next_page_token
            if not token:
                return found


def list_tasks(admin: str, timeout: float = 10.0) -> list[runner_pb2.Task]:
    """Every task of the runner at ``admin``, through the admin gRPC ListTasks."""
    tasks: list[runner_pb2.Task] = []
    with grpc.insecure_channel(admin) as channel:
        stub = runner_pb2_grpc.RunnerStub(channel)
        token = ""
        while True:
            page = stub.ListTasks(
                runner_pb2.ListTasksRequest(page_token=token, page_size=1000), timeout=timeout
            )
            tasks.extend(page.tasks)
            token = page.next_page_token
            if not token:
                return tasks
