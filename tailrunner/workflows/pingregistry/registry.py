"""``PingRegistry``: the ping-registry workflows and their indexes, in a journal.

The commands that the admin CLI and the three activities give, each built
from the pure behaviours so that any of them may be interrupted and run
again without doing anything twice:

- ``begin``: started on the workflow, then started on its registry's index;
- ``ping``: a pinger's pings, each with a request id of its own
  (``ping/PINGER/N``), so that a pinger that restarts posts only the rest;
- ``summarize`` / ``abort_expired`` / ``cancel``: the summary;
- ``commit``: completed on the workflow, completed on the index, committed
  on the workflow (seed 003's multi-step commit);
- ``catch_up_index``: what the index keeper does for one workflow: the
  index steps the workflow's state calls for that are missing, and the
  final committed of an interrupted commit;
- ``delete``: removes a completed workflow from the index, committed or not.

A workflow is an aggregate of type :data:`WORKFLOW_TYPE` (its id the
workflow's UUID); a registry's index one of type :data:`INDEX_TYPE`, whose id
:func:`index_id` derives from the registry's name.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from uuid import UUID

from tailrunner.errors import InvalidArgument
from tailrunner.journal.api import JournalApi
from tailrunner.workflows.aggregates import RETRY_NO_VC, Aggregates
from tailrunner.workflows.pingregistry.behaviour import (
    AbortExpired,
    AppendPing,
    Cancel,
    Command,
    Commit,
    Delete,
    End,
    Event,
    Init,
    PingRegistryBehaviour,
    PostSummary,
)
from tailrunner.workflows.pingregistry.index import (
    IndexBehaviour,
    IndexCommand,
    IndexEntry,
    IndexEvent,
    IndexState,
    RecordCompleted,
    RecordDeleted,
    RecordStarted,
)
from tailrunner.workflows.pingregistry.state import State, StateCode

#: The aggregate type of a ping-registry workflow.
WORKFLOW_TYPE = "ping-registry"
#: The aggregate type of a registry's index of workflows.
INDEX_TYPE = "ping-registry-index"

# Fixed forever: index ids derive from it, so changing it loses every index.
_INDEX_NAMESPACE = UUID("5c0b7a52-3f6e-4d0c-9f5e-6a7d2b8e1c40")

#: The summary of a workflow gathered at its deadline as planned.
SUMMARY_MESSAGE = "pings gathered at the deadline"

_MAX_PINGER = 64


def index_id(registry: str) -> UUID:
    """The id of ``registry``'s index aggregate (the same in every process)."""
    return uuid.uuid5(_INDEX_NAMESPACE, registry)


def check_pinger(name: str) -> str:
    """``name`` if it can name a pinger: 1 to 64 printable ASCII characters, no spaces.

    It becomes part of the request ids of the pinger's pings.

    :raises InvalidArgument: naming ``pinger``.
    """
    if not 0 < len(name) <= _MAX_PINGER or not all("!" <= c <= "~" for c in name):
        raise InvalidArgument(
            "pinger", f"{name!r}: expected 1 to {_MAX_PINGER} printable ASCII characters, no spaces"
        )
    return name


class PingRegistry:
    """The ping-registry workflows of one journal, and their registries' indexes."""

    def __init__(self, journal: JournalApi) -> None:
        self.workflows: Aggregates[State, Command, Event] = Aggregates(
            journal, PingRegistryBehaviour(), WORKFLOW_TYPE
        )
        self.indexes: Aggregates[IndexState, IndexCommand, IndexEvent] = Aggregates(
            journal, IndexBehaviour(), INDEX_TYPE
        )

    async def begin(
        self, registry: str, deadline: datetime, *, workflow: UUID | None = None
    ) -> UUID:
        """Start a workflow for ``registry``; its id.

        :param workflow: the id to use (a repeat with the same registry and
            deadline is a no-op); a new random one by default.
        :raises ArgumentNotIdempotent: ``workflow`` was begun with another
            registry or deadline.
        :raises InvalidArgument: an empty registry, or a deadline without a timezone.
        """
        workflow = uuid.uuid4() if workflow is None else workflow
        await self.workflows.tell(workflow, Init(registry=registry, deadline=deadline), RETRY_NO_VC)
        # Interrupted here, the index keeper records it (catch_up_index).
        await self.indexes.tell(
            index_id(registry), RecordStarted(workflow=workflow, deadline=deadline), RETRY_NO_VC
        )
        return workflow

    async def show(self, workflow: UUID) -> State:
        """The workflow's state.

        :raises NotFound: there is no such workflow.
        """
        state, _ = await self.workflows.load(workflow, missing_ok=False)
        return state

    async def list(self, registry: str) -> tuple[IndexEntry, ...]:
        """The workflows of ``registry`` that its index lists (not deleted), oldest first.

        :raises InvalidArgument: an empty registry (no workflow can have one).
        """
        if not registry:
            raise InvalidArgument("registry", "must not be empty")
        state, _ = await self.indexes.load(index_id(registry))
        return state.listed()

    async def ping(
        self, workflow: UUID, *, pinger: str, count: int, code: int = 0, message: str = "ok"
    ) -> int:
        """Post ``pinger``'s pings until it has posted ``count``; how many this call told.

        The count includes a ping the journal already had under its request id
        (another call of the same pinger appended it first), so two calls at
        once may both count it; the journal holds it once.

        Each ping has the request id ``ping/PINGER/N``: a pinger that crashed
        after an append but before it learnt of it posts that ping once, not
        twice, when it runs again.

        :raises WrongState: the workflow no longer takes pings (it is summarized).
        :raises Uninitialized: the workflow was never begun.
        """
        check_pinger(pinger)
        posted = 0
        state = await self.show(workflow)
        for n in range(state.pings_by(pinger), count):
            await self.workflows.tell(
                workflow,
                AppendPing(code=code, message=message, pinger=pinger),
                RETRY_NO_VC,
                request_id=f"ping/{pinger}/{n}",
            )
            posted += 1
        return posted

    async def summarize(self, workflow: UUID) -> State:
        """Post the summary of the pings gathered so far (a repeat is a no-op)."""
        await self.workflows.tell(
            workflow, PostSummary(code=0, message=SUMMARY_MESSAGE), RETRY_NO_VC
        )
        return await self.show(workflow)

    async def abort_expired(self, workflow: UUID) -> State:
        """Close a workflow that expired unsummarized, with an error summary (or no-op)."""
        await self.workflows.tell(workflow, AbortExpired(), RETRY_NO_VC)
        return await self.show(workflow)

    async def cancel(self, workflow: UUID) -> State:
        """Cancel an open workflow: a summary with code ``CANCELLED_CODE``, and no more pings.

        Best effort: a summarized (or later) workflow is left as it is. The
        servers and the daemon see the summary and stop.

        :raises NotFound: there is no such workflow.
        """
        await self.show(workflow)
        await self.workflows.tell(workflow, Cancel(), RETRY_NO_VC)
        return await self.show(workflow)

    async def commit(self, workflow: UUID) -> State:
        """Commit a summarized workflow: completed, the index's completed, committed.

        Each step is idempotent, so a commit that was interrupted is finished
        by running it again (or by the index keeper); a committed workflow is
        left as it is.

        :raises WrongState: the workflow is not summarized yet; names its state.
        :raises NotFound: there is no such workflow.
        """
        await self.show(workflow)  # else an unknown id would be "uninitialized (init it first)"
        await self.workflows.tell(workflow, Commit(), RETRY_NO_VC)
        return await self.catch_up_index(workflow)

    async def catch_up_index(self, workflow: UUID) -> State:
        """Do what the workflow's state calls for and is missing: the index keeper's step.

        A started workflow is recorded in its index; a completed one is
        recorded completed there, and then gets its final committed event.
        """
        state, _ = await self.workflows.load(workflow)
        if state.code is StateCode.UNINITIALIZED:
            return state
        await self._index_up_to(state)
        if state.code is StateCode.COMPLETED:
            await self.workflows.tell(workflow, End(), RETRY_NO_VC)
            state, _ = await self.workflows.load(workflow)
        return state

    async def delete(self, workflow: UUID) -> State:
        """Remove a completed workflow from its registry's index (committed or not).

        :raises WrongState: the workflow is not completed; names its state.
        :raises NotFound: there is no such workflow.
        """
        state = await self.show(workflow)
        await self.workflows.tell(workflow, Delete(), RETRY_NO_VC)  # checks the state
        await self._index_up_to(state)
        await self.indexes.tell(
            index_id(state.registry), RecordDeleted(workflow=workflow), RETRY_NO_VC
        )
        return state

    async def _index_up_to(self, state: State) -> None:
        """Record in the index what ``state`` says: started, and completed once completed."""
        assert state.deadline is not None, "an initialized workflow has a deadline"
        index = index_id(state.registry)
        await self.indexes.tell(
            index, RecordStarted(workflow=state.id, deadline=state.deadline), RETRY_NO_VC
        )
        if state.code in (StateCode.COMPLETED, StateCode.TERMINATED):
            await self.indexes.tell(index, RecordCompleted(workflow=state.id), RETRY_NO_VC)
