"""Ping-registry workflows as long-running operations, and the ``Workflows`` service.

A workflow is the operation ``operations/{workflow uuid}`` (its aggregate id
is the UUID). It is **done once summarized**, because the summary is its
result: the response is the summary (``tailrunner.v1.ServerPingsGathered``)
when its code is 0; otherwise the error is ``google.rpc.Status`` with the
summary's code and message (``CANCELLED`` for a cancelled workflow,
``DEADLINE_EXCEEDED`` for one that expired unsummarized). The admin's
commit, which closes the history, comes after and changes nothing the
operation shows. The metadata is a ``tailrunner.v1.PingRegistryMetadata``.

States, in the vocabulary of :class:`~tailrunner.operations.state.StateCode`:

============================  ==========  ======================
workflow                      operation   ``state=`` filter name
============================  ==========  ======================
initialized (no ping yet)     PENDING     RUNNING
appending                     RUNNING     RUNNING
summarized, code 0 (or later) COMPLETE    SUCCEEDED
summarized, code 1            STOPPED     CANCELLED
summarized, any other code    FAIL        FAILED
============================  ==========  ======================

``CancelOperation`` cancels an open workflow (its servers and daemon see the
cancelled summary and stop); ``DeleteOperation`` commits a done workflow
that was not committed yet and removes it from its registry's index, after
which it is not found.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import status_pb2
from ulid import ULID

from tailrunner.errors import InvalidArgument, OperationNotDone, TailrunnerError
from tailrunner.journal.api import JournalApi
from tailrunner.journal.server import HostedService, ServiceFactory
from tailrunner.operations.names import operation_name
from tailrunner.operations.sources import OperationView
from tailrunner.operations.state import Operation, StateCode
from tailrunner.proto.v1 import workflows_pb2 as pb
from tailrunner.proto.v1 import workflows_pb2_grpc
from tailrunner.rpc_errors import abort
from tailrunner.workflows.pingregistry.behaviour import CANCELLED_CODE
from tailrunner.workflows.pingregistry.index import EntryCode
from tailrunner.workflows.pingregistry.registry import WORKFLOW_TYPE, PingRegistry, index_id
from tailrunner.workflows.pingregistry.state import State
from tailrunner.workflows.pingregistry.state import StateCode as WorkflowCode

#: The full name of the ``Workflows`` service.
WORKFLOWS_SERVICE: str = pb.DESCRIPTOR.services_by_name["Workflows"].full_name
#: The operation kind of a ping-registry workflow (``kind=ping-registry`` in a filter).
KIND = "ping-registry"
#: The deadline of a workflow begun without one.
DEFAULT_DEADLINE = timedelta(seconds=30)
#: The longest deadline ``BeginPingRegistry`` accepts.
MAX_DEADLINE = timedelta(days=366)

_DONE = (WorkflowCode.SUMMARIZED, WorkflowCode.COMPLETED, WorkflowCode.TERMINATED)


def operation_state(state: State) -> StateCode:
    """The operation state that a workflow's state shows (the module's table)."""
    if state.code is WorkflowCode.UNINITIALIZED:
        return StateCode.UNKNOWN
    if state.summary is None:
        return StateCode.RUNNING if state.pings else StateCode.PENDING
    if state.summary.code == 0:
        return StateCode.COMPLETE
    return StateCode.STOPPED if state.summary.code == CANCELLED_CODE else StateCode.FAIL


def summary_message(state: State) -> pb.ServerPingsGathered:
    """The summary event's message again, as the operation's response carries it."""
    summary = state.summary
    assert summary is not None
    return pb.ServerPingsGathered(
        code=summary.code,
        message=summary.message,
        pings=[
            pb.Ping(code=p.code, message=p.message, pinger=p.pinger, event_id=p.event_id.bytes)
            for p in summary.pings
        ],
    )


def to_operation(state: State, version: ULID | None = None) -> Operation:
    """The ``google.longrunning.Operation`` that shows workflow ``state``.

    :param version: the workflow's head, for the metadata's update time (by
        default the newest event the state records).
    """
    code = operation_state(state)
    operation = Operation(name=operation_name(str(state.id)), done=state.code in _DONE)
    operation.metadata.Pack(metadata(state, code, version))
    if code is StateCode.COMPLETE:
        operation.response.Pack(summary_message(state))
    elif state.summary is not None:
        operation.error.CopyFrom(
            status_pb2.Status(code=state.summary.code, message=state.summary.message)
        )
    return operation


def metadata(state: State, code: StateCode, version: ULID | None = None) -> pb.PingRegistryMetadata:
    """The workflow's operation metadata: kind, states, times, registry, progress."""
    message = pb.PingRegistryMetadata(
        kind=KIND,
        state=code.value,
        workflow_state=state.code.value,
        registry=state.registry,
        pings_gathered=len(state.pings),
    )
    if state.started is not None:
        message.create_time.CopyFrom(_stamp(state.started.datetime))
    newest = version if version is not None else _newest(state)
    if newest is not None:
        message.update_time.CopyFrom(_stamp(newest.datetime))
    if state.deadline is not None:
        message.deadline.CopyFrom(_stamp(state.deadline))
    return message


class PingRegistrySource:
    """Ping-registry workflows, as an :class:`~tailrunner.operations.sources.OperationSource`."""

    def __init__(self, journal: JournalApi, registry: PingRegistry | None = None) -> None:
        self._registry = registry if registry is not None else PingRegistry(journal)

    @property
    def aggregate_type(self) -> str:
        return WORKFLOW_TYPE

    @property
    def registry(self) -> PingRegistry:
        return self._registry

    async def view(self, aggregate_id: UUID) -> OperationView | None:
        state, version = await self._registry.workflows.load(aggregate_id)
        if version is None or state.started is None:
            return None
        index, _ = await self._registry.indexes.load(index_id(state.registry))
        entry = index.get(aggregate_id)
        if entry is not None and entry.code is EntryCode.DELETED:
            return None
        return OperationView(
            operation=to_operation(state, version),
            kind=KIND,
            state=operation_state(state),
            parent=None,
            create_time=state.started.datetime,
            update_time=version.datetime,
            version=version,
        )

    async def cancel(self, aggregate_id: UUID) -> None:
        await self._registry.cancel(aggregate_id)

    async def delete(self, aggregate_id: UUID) -> None:
        state = await self._registry.show(aggregate_id)
        if state.code not in _DONE:
            raise OperationNotDone(
                operation_name(str(aggregate_id)), operation_state(state).value, "delete"
            )
        await self._registry.commit(aggregate_id)
        await self._registry.delete(aggregate_id)


class WorkflowsService(workflows_pb2_grpc.WorkflowsServicer):
    """``tailrunner.v1.Workflows``: workflows begun as long-running operations."""

    def __init__(self, registry: PingRegistry) -> None:
        self._registry = registry

    async def BeginPingRegistry(
        self, request: pb.BeginPingRegistryRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Operation:
        try:
            deadline = _deadline(request)
            workflow = _workflow_for(request.request_id) if request.request_id else None
            if workflow is not None:
                # A repeat begins nothing: the first call's workflow, as it is now.
                state, version = await self._registry.workflows.load(workflow)
                if version is not None:
                    return to_operation(state, version)
            begun = await self._registry.begin(
                request.registry, datetime.now(UTC) + deadline, workflow=workflow
            )
            state, version = await self._registry.workflows.load(begun)
            return to_operation(state, version)
        except TailrunnerError as exc:
            await abort(context, exc, rpc="BeginPingRegistry")


@dataclass(frozen=True, slots=True)
class HostedWorkflows:
    """The ``Workflows`` service as a :class:`~tailrunner.journal.server.HostedService`."""

    service: WorkflowsService

    @property
    def service_names(self) -> tuple[str, ...]:
        return (WORKFLOWS_SERVICE,)

    def add_to_server(self, server: grpc.aio.Server) -> None:
        workflows_pb2_grpc.add_WorkflowsServicer_to_server(self.service, server)


def workflows_service() -> ServiceFactory:
    """The factory that makes the journal server carry ``tailrunner.v1.Workflows``.

    ::

        JournalServer(store, services=[operations_service(), workflows_service()])
    """

    def make(journal: JournalApi) -> HostedService:
        return HostedWorkflows(WorkflowsService(PingRegistry(journal)))

    return make


def _deadline(request: pb.BeginPingRegistryRequest) -> timedelta:
    if not request.HasField("deadline"):
        return DEFAULT_DEADLINE
    expected = f"expected 0 to {MAX_DEADLINE.days} days"
    try:
        deadline = request.deadline.ToTimedelta()
    except (OverflowError, ValueError) as exc:  # seconds beyond what a timedelta holds
        raise InvalidArgument("deadline", f"{request.deadline.seconds}s: {expected}") from exc
    if deadline < timedelta(0) or deadline > MAX_DEADLINE:
        raise InvalidArgument("deadline", f"{deadline.total_seconds():g}s: {expected}")
    return deadline


def _workflow_for(request_id: str) -> UUID:
    """The workflow id a request id stands for (the same in every journal server)."""
    if not 0 < len(request_id) <= 128 or not all("!" <= c <= "~" for c in request_id):
        raise InvalidArgument("request_id", "expected 1 to 128 printable ASCII characters")
    return uuid.uuid5(_REQUEST_NAMESPACE, request_id)


_REQUEST_NAMESPACE = UUID("0f5b9a34-7c1d-4e2a-b6f8-93d0c4a1e7b2")


def _stamp(at: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(at)
    return stamp


def _newest(state: State) -> ULID | None:
    if state.summary is not None:
        return state.summary.event_id
    if state.pings:
        return state.pings[-1].event_id
    return state.started


__all__ = [
    "KIND",
    "PingRegistrySource",
    "WorkflowsService",
    "workflows_service",
    "operation_state",
    "to_operation",
]
