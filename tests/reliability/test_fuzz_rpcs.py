"""Every RPC of every service, fuzzed (issue 15): each call ends in a proper status.

The services: the journal server's ``tailrunner.v1.Journal``,
``google.longrunning.Operations`` and ``tailrunner.v1.Workflows`` (a
``tailrunner journal serve`` process on a SQLite file), and the runner's
admin ``tailrunner.v1.Runner`` (a ``tailrunner run`` process over that
journal). Methods come from the service descriptors, so a new method is
fuzzed without a change here; a test checks through server reflection that
each server serves no service left out (beside gRPC's health and reflection).

Two kinds of request per service, through a generic channel with identity
serializers:

- ``raw``: random bytes, mutated encodings of real requests (truncated,
  flipped, garbage appended), deeply nested unknown groups, overlong varints;
- ``typed``: well-typed hostile messages built from the descriptor: ids of
  the wrong length and real ones, huge and empty values, unknown enum
  numbers, malformed page tokens and filters, timestamps and durations out
  of range.

A call must end OK or with a code other than UNKNOWN and INTERNAL; a stream
is read for at most 3 messages (50 ms after the first) and then cancelled.
After each run the server still answers health SERVING and a normal round
trip (an Append read back through Events; ListTasks). The figures (calls per
status code) are printed per service and kind.

CI: 200 examples per kind per service (``TAILRUNNER_FUZZ_EXAMPLES=N`` for
more, or ``TAILRUNNER_SOAK=long`` for 5,000); ``TAILRUNNER_FUZZ_SEED=N``
repeats a run.
"""

from __future__ import annotations

import base64
import collections
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import hypothesis
import pytest
from google.longrunning import operations_pb2_grpc, operations_proto_pb2
from google.protobuf import duration_pb2, message_factory
from google.protobuf.descriptor import (
    Descriptor,
    FieldDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ulid import ULID

from tailrunner.proto.v1 import (
    journal_pb2,
    journal_pb2_grpc,
    runner_pb2,
    runner_pb2_grpc,
    workflows_pb2,
    workflows_pb2_grpc,
)

from .procs import AGGREGATE_TYPE, KillableJournal, RunnerProcess, list_tasks, runner_config

pytestmark = pytest.mark.slow

LONG = os.environ.get("TAILRUNNER_SOAK") == "long"
EXAMPLES = int(os.environ.get("TAILRUNNER_FUZZ_EXAMPLES", "5000" if LONG else "200"))
SEED_ENV = "TAILRUNNER_FUZZ_SEED"
SEED = int(os.environ[SEED_ENV]) if os.environ.get(SEED_ENV) else int(uuid.uuid4().int % 2**32)

#: The services each server carries, by the target that serves them.
JOURNAL_SERVICES: tuple[ServiceDescriptor, ...] = (
    journal_pb2.DESCRIPTOR.services_by_name["Journal"],
    operations_proto_pb2.DESCRIPTOR.services_by_name["Operations"],
    workflows_pb2.DESCRIPTOR.services_by_name["Workflows"],
)
RUNNER_SERVICES: tuple[ServiceDescriptor, ...] = (runner_pb2.DESCRIPTOR.services_by_name["Runner"],)
#: Served beside them by gRPC's own libraries, not fuzzed here.
LIBRARY_SERVICES = {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}

#: Codes that say the server failed to handle a request: a product defect.
DEFECTS = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
UNARY_TIMEOUT = 15.0
#: Only bounds a hang: a stream that sends nothing at all.
STREAM_TIMEOUT = 5.0
STREAM_MESSAGES = 3
#: A stream is cancelled this long after its first message.
STREAM_LINGER = 0.05


# --------------------------------------------------------------------------- the servers


@dataclass
class Known:
    """Real values of the servers, mixed into the requests so that handlers get past checks."""

    aggregate_ids: list[uuid.UUID] = field(default_factory=list)
    event_ids: list[ULID] = field(default_factory=list)
    operation_names: list[str] = field(default_factory=list)
    activities: list[str] = field(default_factory=lambda: ["recorder"])
    #: Real next-page tokens of the list methods.
    page_tokens: list[str] = field(default_factory=list)


@dataclass
class Servers:
    journal: str
    admin: str
    known: Known
    channels: dict[str, grpc.Channel]

    def channel_for(self, service: ServiceDescriptor) -> grpc.Channel:
        return self.channels[self.admin if service in RUNNER_SERVICES else self.journal]


@pytest.fixture(scope="module")
def servers(plugin_site: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """A journal process and a lazy runner process over it, with a few events and an operation."""
    print(f"seed {SEED} (repeat with {SEED_ENV}={SEED})")
    tmp = tmp_path_factory.mktemp("fuzz")
    # WaitOperation is capped at 0.5 s, so a hostile timeout does not hold a call for long.
    journal = KillableJournal(tmp / "journal.db", extra_args=["--max-wait", "0.5"])
    journal.start()
    runner: RunnerProcess | None = None
    channels: dict[str, grpc.Channel] = {}
    try:
        known = Known()
        with grpc.insecure_channel(journal.address) as channel:
            stub = journal_pb2_grpc.JournalStub(channel)
            for n in range(3):
                aggregate = uuid.uuid4()
                known.aggregate_ids.append(aggregate)
                response = stub.Append(
                    journal_pb2.AppendRequest(
                        aggregate_type=AGGREGATE_TYPE,
                        aggregate_id=aggregate.bytes,
                        events=[journal_pb2.NewEvent(type="tick", data=b"{}")] * (n + 1),
                    ),
                    timeout=30,
                )
                known.event_ids.extend(ULID.from_bytes(e) for e in response.event_ids)
            for _ in range(2):
                operation = workflows_pb2_grpc.WorkflowsStub(channel).BeginPingRegistry(
                    workflows_pb2.BeginPingRegistryRequest(registry="fuzz"), timeout=30
                )
                known.operation_names.append(operation.name)
            known.page_tokens.append(
                stub.ListAggregates(
                    journal_pb2.ListAggregatesRequest(page_size=1), timeout=30
                ).next_page_token
            )
            operations = operations_pb2_grpc.OperationsStub(channel)  # type: ignore[no-untyped-call]
            known.page_tokens.append(
                operations.ListOperations(
                    operations_proto_pb2.ListOperationsRequest(page_size=1), timeout=30
                ).next_page_token
            )
        config = runner_config(tmp / "runner.toml", journal=journal.address)
        runner = RunnerProcess(config, "lazy", plugin_site, {})
        admin = runner.wait_started()
        deadline = time.monotonic() + 60
        while len(list_tasks(admin)) < len(known.aggregate_ids):
            assert time.monotonic() < deadline, "the runner did not find the aggregates"
            time.sleep(0.1)
        with grpc.insecure_channel(admin) as channel:
            known.page_tokens.append(
                runner_pb2_grpc.RunnerStub(channel)
                .ListTasks(runner_pb2.ListTasksRequest(page_size=1), timeout=30)
                .next_page_token
            )
        assert all(known.page_tokens), f"a list method gave no next page: {known.page_tokens}"
        channels = {
            address: grpc.insecure_channel(
                address, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
            )
            for address in (journal.address, admin)
        }
        yield Servers(journal=journal.address, admin=admin, known=known, channels=channels)
    finally:
        for channel in channels.values():
            channel.close()
        if runner is not None:
            assert runner.stop() == 0, f"the runner did not stop cleanly: {runner.errors()[-5:]}"
        journal.stop()


# --------------------------------------------------------------------------- hostile values

INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}

#: Seconds of a Timestamp or Duration: the edges of datetime and of the proto ranges, and beyond.
HOSTILE_SECONDS = [
    0,
    -1,
    -(2**62),
    2**62,
    -(2**63),
    2**63 - 1,
    253_402_300_799,  # 9999-12-31T23:59:59Z, the last valid Timestamp second
    253_402_300_800,
    -62_135_596_800,  # 0001-01-01T00:00:00Z
    -62_135_596_801,
    315_576_000_000,  # the largest Duration
    315_576_000_001,
]
HOSTILE_NANOS = [0, -1, 999_999_999, 1_000_000_000, -(2**31), 2**31 - 1]


def _token(body: object) -> str:
    raw = json.dumps(body, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


HOSTILE_TEXT = [
    "",
    " ",
    "\x00",
    "\x7f\x1b[31m",
    "a" * 129,
    "x" * 100_000,
    "🙂" * 1000,
    "..",
    "../../etc/passwd",
    "%%%",
    "operations/",
    "operations/" + "a" * 300,
    "operations/../x",
    "00000000-0000-0000-0000-000000000000",
    "not-a-uuid",
    "0" * 26,
    "ZZZZZZZZZZZZZZZZZZZZZZZZZZ",  # ULID-shaped, out of range
    "8ZZZZZZZZZZZZZZZZZZZZZZZZZ",
    # Page tokens: crafted, deep, huge, not base64.
    _token({"v": 1, "s": [10**30, "a"]}),
    _token({"v": 99}),
    _token([1, 2, 3]),
    _token("x"),
    base64.urlsafe_b64encode(b"[" * 50_000 + b"]" * 50_000).decode(),
    base64.urlsafe_b64encode(b"\xff\xfe" * 100).decode(),
    "A" * 200_000,
    "====",
    # AIP-160 filters, broken and hostile.
    "done = true",
    "done = ",
    'name = "',
    "(" * 10_000,
    "metadata.@type = x AND NOT OR",
    "a" * 64 + " = " + "b" * 64,
]

HOSTILE_BYTES = [
    b"",
    b"\x00",
    b"\x00" * 15,
    b"\x00" * 16,
    b"\xff" * 16,
    b"\x00" * 17,
    b"\xff" * 32,
    b"x" * 100_000,
    b"\x00" * (1024 * 1024 + 1),
]


#: Filters that parse, for the fields named ``filter``.
FILTERS = ["", "done = true", "done = false", "done=true"]
BASE64_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_="


def real_text(known: Known) -> dict[str, list[str]]:
    """The real values a text field of this name takes, so that requests get past the checks."""
    return {
        "name": known.operation_names,
        "activity": known.activities,
        "aggregate_id": [str(a) for a in known.aggregate_ids],
        "aggregate_type": [AGGREGATE_TYPE],
        "type": ["tick"],
        "tail": [str(e) for e in known.event_ids],
        "from_tail": [str(e) for e in known.event_ids],
        "registry": ["fuzz"],
        "filter": FILTERS,
        "page_token": known.page_tokens or [""],
    }


def plausible(fd: FieldDescriptor, known: Known) -> st.SearchStrategy[Any] | None:
    """A valid value for a scalar field, where one is known."""
    if fd.is_repeated or fd.message_type is not None:
        return None
    if fd.type == FieldDescriptor.TYPE_STRING:
        values = real_text(known).get(fd.name)
        return st.sampled_from(values) if values else None
    if fd.type == FieldDescriptor.TYPE_BYTES:
        if fd.name == "aggregate_id":
            return st.sampled_from([a.bytes for a in known.aggregate_ids])
        if fd.name in ("after", "expected_tail", "tail"):
            return st.sampled_from([b""] + [e.bytes for e in known.event_ids])
        return st.binary(max_size=20)
    if fd.type == FieldDescriptor.TYPE_ENUM:
        assert fd.enum_type is not None
        return st.sampled_from([v.number for v in fd.enum_type.values])
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if fd.type in INT_RANGES:
        return st.integers(0, 50)
    return None


def _text(known: Known, field_name: str) -> st.SearchStrategy[str]:
    every = (
        [str(a) for a in known.aggregate_ids]
        + [a.hex for a in known.aggregate_ids]
        + [str(e) for e in known.event_ids]
        + known.operation_names
        + known.activities
        + [AGGREGATE_TYPE, "tick", ""]
    )
    by_name = real_text(known)
    real = st.sampled_from(by_name.get(field_name) or every)
    strategies = [real, real, st.sampled_from(every), st.sampled_from(HOSTILE_TEXT)]
    if field_name == "page_token" and known.page_tokens:
        # A real token with one character changed: the right shape around a wrong cursor.
        strategies.append(
            st.builds(
                lambda token, at, char: (
                    token[: at % len(token)] + char + token[at % len(token) + 1 :]
                ),
                st.sampled_from(known.page_tokens),
                st.integers(0, 10_000),
                st.sampled_from(BASE64_CHARS),
            )
        )
    strategies += [
        st.text(max_size=40),
        st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=140),
    ]
    return st.one_of(strategies)


def _bytes(known: Known) -> st.SearchStrategy[bytes]:
    real = [a.bytes for a in known.aggregate_ids] + [e.bytes for e in known.event_ids]
    return st.one_of(
        st.sampled_from(real),
        st.sampled_from(real),
        st.sampled_from(HOSTILE_BYTES),
        st.binary(min_size=16, max_size=16),
        st.binary(max_size=40),
    )


def _time_like(cls: type[Message]) -> st.SearchStrategy[Message]:
    seconds = st.one_of(st.sampled_from(HOSTILE_SECONDS), st.integers(-(2**63), 2**63 - 1))
    nanos = st.one_of(st.sampled_from(HOSTILE_NANOS), st.integers(-(2**31), 2**31 - 1))
    return st.builds(lambda s, n: cls(seconds=s, nanos=n), seconds, nanos)


def _scalar(fd: FieldDescriptor, known: Known) -> st.SearchStrategy[Any]:
    if fd.type in INT_RANGES:
        low, high = INT_RANGES[fd.type]
        return st.one_of(
            st.sampled_from([0, 1, -1 if low else 2, low, high]), st.integers(low, high)
        )
    if fd.type == FieldDescriptor.TYPE_ENUM:
        assert fd.enum_type is not None
        known_numbers = [v.number for v in fd.enum_type.values]
        # proto3 enums are open: unknown numbers travel as they are.
        return st.one_of(
            st.sampled_from(known_numbers),
            st.sampled_from([-1, 99, 2**31 - 1, -(2**31)]),
            st.integers(-(2**31), 2**31 - 1),
        )
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if fd.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32)
    if fd.type == FieldDescriptor.TYPE_STRING:
        return _text(known, fd.name)
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return _bytes(known)
    raise AssertionError(f"no strategy for field {fd.full_name} of type {fd.type}")


def hostile_message(desc: Descriptor, known: Known, depth: int = 0) -> st.SearchStrategy[Message]:
    """Well-typed messages of ``desc`` with hostile values in any subset of its fields."""
    cls = message_factory.GetMessageClass(desc)
    if desc.full_name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
        return _time_like(cls)
    values: dict[str, st.SearchStrategy[Any]] = {}
    for fd in desc.fields:
        is_map = fd.message_type is not None and fd.message_type.GetOptions().map_entry
        if fd.message_type is not None and not is_map:
            if depth >= 4:  # recursive types (Struct, Value) nest this deep
                continue
            one: st.SearchStrategy[Any] = hostile_message(fd.message_type, known, depth + 1)
        elif fd.message_type is not None:  # a map
            key_fd = fd.message_type.fields_by_name["key"]
            value_fd = fd.message_type.fields_by_name["value"]
            value = (
                hostile_message(value_fd.message_type, known, depth + 1)
                if value_fd.message_type is not None
                else _scalar(value_fd, known)
            )
            values[fd.name] = st.dictionaries(_scalar(key_fd, known), value, max_size=3)
            continue
        else:
            one = _scalar(fd, known)
        if fd.is_repeated:
            values[fd.name] = st.one_of(
                st.lists(one, max_size=3),
                # Many of one small value: limits on list lengths (a big one would
                # make a request of gigabytes, refused before any handler runs).
                one.filter(lambda v: _size(v) <= 64).map(lambda v: [v] * 2000),
            )
        else:
            values[fd.name] = one
    hostile = st.fixed_dictionaries({}, optional=values)
    # Half the time every field with a known valid value has one, and the others are
    # hostile: requests that get past the first checks to the deeper ones.
    valid = {fd.name: v for fd in desc.fields if (v := plausible(fd, known)) is not None}
    rest = {name: v for name, v in values.items() if name not in valid}
    mostly_valid = st.fixed_dictionaries(valid, optional=rest)
    return st.one_of(hostile, mostly_valid).map(lambda fields: _build(cls, fields))


def _size(value: object) -> int:
    if isinstance(value, Message):
        return value.ByteSize()
    if isinstance(value, str | bytes):
        return len(value)
    return 8


def _build(cls: type[Message], fields: dict[str, Any]) -> Message:
    message = cls()
    for name, value in fields.items():
        fd = cls.DESCRIPTOR.fields_by_name[name]
        target = getattr(message, name)
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            for key, item in value.items():
                if isinstance(item, Message):
                    target[key].CopyFrom(item)
                else:
                    target[key] = item
        elif fd.is_repeated:
            if fd.message_type is not None:
                for item in value:
                    target.add().CopyFrom(item)
            else:
                target.extend(value)
        elif fd.message_type is not None:
            target.CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


def raw_request(desc: Descriptor, known: Known) -> st.SearchStrategy[bytes]:
    """Bytes that may not parse as ``desc``: random, mutated, deeply nested, overlong."""
    encoded = hostile_message(desc, known).map(lambda m: m.SerializeToString())

    def mutate(data: bytes, at: int, byte: int, how: int) -> bytes:
        if not data:
            return bytes([byte])
        at %= len(data)
        if how == 0:
            return data[:at]  # truncated
        if how == 1:
            return data[:at] + bytes([data[at] ^ byte]) + data[at + 1 :]  # a flipped byte
        return data + bytes([byte]) * (at % 7 + 1)  # garbage after the end

    mutated = st.builds(
        mutate, encoded, st.integers(0, 2**16), st.integers(1, 255), st.integers(0, 2)
    )
    # Start-group tags of field 1 (0x0b): unknown groups nested this deep.
    nested = st.sampled_from([50, 99, 100, 101, 1000, 100_000]).map(
        lambda n: b"\x0b" * n + b"\x0c" * n
    )
    overlong = st.sampled_from(
        [b"\x08" + b"\xff" * 11, b"\x12\xff\xff\xff\xff\x0f", b"\x12\x80\x80\x80\x80\x80\x01"]
    )
    return st.one_of(st.binary(max_size=300), mutated, encoded, nested, overlong)


# --------------------------------------------------------------------------- the calls


def call(channel: grpc.Channel, method: MethodDescriptor, payload: bytes) -> tuple[str, str]:
    """Send ``payload`` as the request of ``method``; its status code's name and details."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    # No serializers: the payload goes as it is, the answer comes back as bytes.
    if method.client_streaming and method.server_streaming:
        both: grpc.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(path)
        return _read_stream(both(iter([payload]), timeout=STREAM_TIMEOUT))
    if method.server_streaming:
        streaming: grpc.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(path)
        return _read_stream(streaming(payload, timeout=STREAM_TIMEOUT))
    try:
        if method.client_streaming:
            uploading: grpc.StreamUnaryMultiCallable[bytes, bytes] = channel.stream_unary(path)
            uploading(iter([payload]), timeout=UNARY_TIMEOUT)
        else:
            unary: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(path)
            unary(payload, timeout=UNARY_TIMEOUT)
    except grpc.RpcError as exc:
        return exc.code().name, exc.details() or ""
    return "OK", ""


def _read_stream(stream: Any) -> tuple[str, str]:
    timer: threading.Timer | None = None
    received = 0
    try:
        for _ in stream:
            received += 1
            if received >= STREAM_MESSAGES:
                break
            if timer is None:
                timer = threading.Timer(STREAM_LINGER, stream.cancel)
                timer.start()
    except grpc.RpcError:
        pass
    finally:
        if timer is not None:
            timer.cancel()
        stream.cancel()
    code: grpc.StatusCode = stream.code()
    if code == grpc.StatusCode.CANCELLED and received:
        return "OK (read, then cancelled)", ""
    return code.name, stream.details() or ""


def still_serving(servers: Servers, service: ServiceDescriptor) -> None:
    """Health SERVING, and a normal round trip on the server of ``service``."""
    channel = servers.channel_for(service)
    health = health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[attr-defined]
        health_pb2.HealthCheckRequest(service=""), timeout=10
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    if service in RUNNER_SERVICES:
        tasks = list_tasks(servers.admin)
        assert {t.activity for t in tasks} == {"recorder"}
        return
    stub = journal_pb2_grpc.JournalStub(channel)
    aggregate = uuid.uuid4()
    appended = stub.Append(
        journal_pb2.AppendRequest(
            aggregate_type=AGGREGATE_TYPE,
            aggregate_id=aggregate.bytes,
            events=[journal_pb2.NewEvent(type="tick", data=b'{"after": "fuzz"}')],
        ),
        timeout=10,
    )
    read = [
        event
        for batch in stub.Events(
            journal_pb2.EventsRequest(aggregate_id=aggregate.bytes), timeout=10
        )
        for event in batch.events
    ]
    assert [e.id for e in read] == list(appended.event_ids)
    assert read[0].data == b'{"after": "fuzz"}'


# --------------------------------------------------------------------------- the tests

SERVICES = JOURNAL_SERVICES + RUNNER_SERVICES
KINDS: dict[str, Callable[[Descriptor, Known], st.SearchStrategy[bytes]]] = {
    "raw": raw_request,
    "typed": lambda desc, known: hostile_message(desc, known).map(lambda m: m.SerializeToString()),
}


# Hypothesis warns when it renders a huge request for its report; huge requests are the point.
@pytest.mark.filterwarnings("ignore:Generating overly large repr")
@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("service", SERVICES, ids=[s.full_name for s in SERVICES])
def test_every_method_answers_with_a_proper_status(
    service: ServiceDescriptor, kind: str, servers: Servers
) -> None:
    """CI: 200 requests of this kind to this service's methods (about 1 s).

    On demand: ``TAILRUNNER_FUZZ_EXAMPLES=N`` or ``TAILRUNNER_SOAK=long`` (5,000);
    ``TAILRUNNER_FUZZ_SEED=N`` repeats the printed seed's run.
    """
    channel = servers.channel_for(service)
    methods = list(service.methods)
    codes: collections.Counter[str] = collections.Counter()
    per_method: collections.Counter[str] = collections.Counter()
    requests = {m.name: KINDS[kind](m.input_type, servers.known) for m in methods}

    @hypothesis.seed(SEED)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        method = data.draw(st.sampled_from(methods), label="method")
        payload = data.draw(requests[method.name], label="request")
        code, details = call(channel, method, payload)
        codes[code] += 1
        per_method[method.name] += 1
        assert code not in {c.name for c in DEFECTS}, (
            f"{service.full_name}/{method.name} answered {code} ({details[:300]!r})"
            f" to {len(payload)} bytes {payload[:120]!r}"
        )

    fuzz()
    print(
        f"{service.full_name} {kind}: {sum(codes.values())} calls,"
        f" by code {dict(codes.most_common())}, by method {dict(per_method)}"
    )
    assert set(per_method) == {m.name for m in methods}, "a method was never called"
    still_serving(servers, service)


def served_services(channel: grpc.Channel) -> set[str]:
    stub: Any = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (response,) = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    return {s.name for s in response.list_services_response.service}


def test_every_served_service_is_fuzzed(servers: Servers) -> None:
    journal = served_services(servers.channels[servers.journal]) - LIBRARY_SERVICES
    admin = served_services(servers.channels[servers.admin]) - LIBRARY_SERVICES
    assert journal == {s.full_name for s in JOURNAL_SERVICES}
    assert admin == {s.full_name for s in RUNNER_SERVICES}


@pytest.mark.parametrize("seconds", [-(2**63), 2**63 - 1, 2**62])
def test_a_deadline_beyond_timedelta_is_invalid_argument(seconds: int, servers: Servers) -> None:
    """Found by the fuzzing above: BeginPingRegistry answered UNKNOWN (OverflowError)."""
    stub = workflows_pb2_grpc.WorkflowsStub(servers.channels[servers.journal])
    request = workflows_pb2.BeginPingRegistryRequest(
        registry="fuzz", deadline=duration_pb2.Duration(seconds=seconds)
    )
    with pytest.raises(grpc.RpcError) as refused:
        stub.BeginPingRegistry(request, timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "deadline" in (refused.value.details() or "")
