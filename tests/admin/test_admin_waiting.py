"""Why a task waits and when it runs next, and what a control that did not land says (issue 10)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio
import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tailrunner.engines.base import Engine
from tailrunner.engines.factory import EngineOptions
from tailrunner.engines.retry import RetryPolicy
from tailrunner.engines.task import Task, Waiting
from tailrunner.errors import StoreError
from tailrunner.proto.v1 import runner_pb2
from tailrunner.rpc_errors import CONTROL_NOT_STORED, ERROR_DOMAIN
from tailrunner.states import TaskState, WaitReason
from tailrunner.tails.memory import MemoryTailStore
from tailrunner.tails.store import RunRecord, TailRecord
from tailrunner.testing import LoopbackJournal

from .conftest import (
    Behaviour,
    append,
    new_aggregate,
    serve_runner,
)

State = runner_pb2.Task.State
#: Slack for an engine that keeps times on the loop clock and converts them.
SLACK = timedelta(seconds=1)


def key_of(agg_id: object, activity: str = "follow") -> dict[str, str]:
    return {"activity": activity, "aggregate_id": str(agg_id)}


def slow_retry(max_attempts: int | None = None) -> EngineOptions:
    """Backoff of one minute: a failed task stays in RETRY for the whole test."""
    return EngineOptions(
        kind="lazy",
        retry=RetryPolicy(initial=60, max_delay=60, jitter=0.0, max_attempts=max_attempts),
    )


async def test_a_task_in_backoff_says_so_and_when_it_runs_next(journal: LoopbackJournal) -> None:
    agg = new_aggregate()
    await append(journal, agg, 1)
    behaviour = Behaviour(fail={agg.id})
    before = datetime.now(UTC)
    async with serve_runner(journal, [behaviour.activity()], options=slow_retry()) as served:
        await served.changes.wait_until(lambda: served.task(agg).state is TaskState.RETRY)
        shown = await served.stub.GetTask(runner_pb2.GetTaskRequest(**key_of(agg.id)))
        listed = await served.stub.ListTasks(runner_pb2.ListTasksRequest())
    after = datetime.now(UTC)

    assert (shown.state, shown.wait_reason) == (State.RETRY, "backoff")
    assert shown.HasField("next_run_time") and not shown.HasField("recheck_time")
    next_run = shown.next_run_time.ToDatetime(tzinfo=UTC)
    assert before + timedelta(seconds=60) - SLACK <= next_run <= after + timedelta(seconds=60)
    assert shown.pending_control == ""
    (row,) = listed.tasks
    assert row.wait_reason == "backoff"
    assert abs(row.next_run_time.ToDatetime(tzinfo=UTC) - next_run) <= SLACK


async def test_a_task_waiting_for_its_retry_after_time_is_waiting_not_retry(
    journal: LoopbackJournal,
) -> None:
    agg = new_aggregate()
    await append(journal, agg, 1)
    when = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    behaviour = Behaviour(retry_after={agg.id: when})
    async with serve_runner(journal, [behaviour.activity()]) as served:
        await served.settled(agg)
        shown = await served.stub.GetTask(runner_pb2.GetTaskRequest(**key_of(agg.id)))
        waiting = await served.stub.ListTasks(runner_pb2.ListTasksRequest(states=[State.WAITING]))

    assert (shown.state, shown.wait_reason) == (State.WAITING, "retry_after")
    assert abs(shown.next_run_time.ToDatetime(tzinfo=UTC) - when) <= SLACK
    assert shown.last_error == ""  # asking for a time is not an error
    assert [t.aggregate_id for t in waiting.tasks] == [str(agg.id)]


async def test_a_sleeping_lazy_task_waits_for_a_signal_with_a_backstop(
    journal: LoopbackJournal,
) -> None:
    agg = new_aggregate()
    await append(journal, agg, 1)
    async with serve_runner(journal, [Behaviour().activity()]) as served:
        await served.settled(agg)
        shown = await served.stub.GetTask(runner_pb2.GetTaskRequest(**key_of(agg.id)))

    assert (shown.state, shown.wait_reason) == (State.SLEEPING, "signal")
    assert not shown.HasField("next_run_time")
    assert shown.HasField("recheck_time")
    assert shown.recheck_time.ToDatetime(tzinfo=UTC) > datetime.now(UTC) - SLACK


async def test_a_suspended_task_waits_for_an_operator_with_no_time(
    journal: LoopbackJournal,
) -> None:
    agg = new_aggregate()
    await append(journal, agg, 1)
    behaviour = Behaviour(fail={agg.id})
    async with serve_runner(
        journal, [behaviour.activity()], options=slow_retry(max_attempts=1)
    ) as served:
        await served.changes.wait_until(lambda: served.task(agg).state is TaskState.SUSPENDED)
        shown = await served.stub.GetTask(runner_pb2.GetTaskRequest(**key_of(agg.id)))
        stopped = await served.stub.StopTask(runner_pb2.StopTaskRequest(**key_of(agg.id)))

    assert (shown.state, shown.wait_reason) == (State.SUSPENDED, "suspended")
    assert not shown.HasField("next_run_time")
    assert (stopped.state, stopped.wait_reason) == (State.STOPPED, "stopped")


async def test_the_reply_carries_what_the_engine_says_of_a_waiting_task(
    journal: LoopbackJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every field of Waiting reaches the wire, for a listing and for one task.
    agg = new_aggregate()
    await append(journal, agg, 1)
    next_run = datetime(2030, 1, 2, 3, 4, 5, 600000, tzinfo=UTC)
    recheck = next_run + timedelta(minutes=4)

    def waiting(self: Engine, task: Task) -> Waiting:
        return Waiting(
            reason=WaitReason.CRON_TICK, next_run_at=next_run, recheck_at=recheck, control="stop"
        )

    async with serve_runner(journal, [Behaviour().activity()]) as served:
        await served.settled(agg)
        monkeypatch.setattr(Engine, "waiting", waiting)
        shown = await served.stub.GetTask(runner_pb2.GetTaskRequest(**key_of(agg.id)))
        listed = await served.stub.ListTasks(runner_pb2.ListTasksRequest())

    for message in (shown, *listed.tasks):
        assert message.wait_reason == "cron_tick"
        assert message.next_run_time.ToDatetime(tzinfo=UTC) == next_run
        assert message.recheck_time.ToDatetime(tzinfo=UTC) == recheck
        assert message.pending_control == "stop"


async def test_a_running_task_has_no_wait_reason(journal: LoopbackJournal) -> None:
    agg = new_aggregate()
    await append(journal, agg, 1)
    behaviour = Behaviour(park={agg.id})
    async with serve_runner(journal, [behaviour.activity()]) as served:
        with anyio.fail_after(5):
            await behaviour.parked_event(agg.id).wait()
        shown = await served.stub.GetTask(runner_pb2.GetTaskRequest(**key_of(agg.id)))

    assert (shown.state, shown.wait_reason, shown.pending_control) == (State.RUNNING, "", "")
    assert not shown.HasField("next_run_time") and not shown.HasField("recheck_time")


async def test_a_stored_task_shows_its_stored_wait_and_next_run_time(
    journal: LoopbackJournal,
) -> None:
    agg = new_aggregate()
    await append(journal, agg, 1)
    due = datetime(2030, 6, 1, 12, 0, 0, 250000, tzinfo=UTC)
    tails = MemoryTailStore()
    for activity, state, next_run_at in [
        ("retired", "RETRY", due),
        ("elsewhere", "SLEEPING", None),
    ]:
        await tails.save(
            TailRecord(
                activity=activity,
                aggregate=agg,
                tail=None,
                state=state,
                attempts=2,
                failures=3,
                next_run_at=next_run_at,
                updated_at=datetime.now(UTC) - timedelta(hours=1),
            )
        )
    async with serve_runner(journal, [Behaviour().activity()], tails=tails) as served:
        await served.settled(agg)
        retired = await served.stub.GetTask(runner_pb2.GetTaskRequest(**key_of(agg.id, "retired")))
        elsewhere = await served.stub.GetTask(
            runner_pb2.GetTaskRequest(**key_of(agg.id, "elsewhere"))
        )

    assert (retired.live, retired.state, retired.wait_reason) == (False, State.RETRY, "backoff")
    assert retired.next_run_time.ToDatetime(tzinfo=UTC) == due
    # Only the engine that runs it could say what a sleeping task waits for.
    assert (elsewhere.state, elsewhere.wait_reason) == (State.SLEEPING, "")
    assert not elsewhere.HasField("next_run_time")


async def test_resuming_a_task_that_is_not_suspended_or_stopped_says_so(
    journal: LoopbackJournal,
) -> None:
    agg = new_aggregate()
    await append(journal, agg, 1)
    behaviour = Behaviour()
    async with serve_runner(journal, [behaviour.activity()]) as served:
        await served.settled(agg)
        with pytest.raises(grpc.aio.AioRpcError) as sleeping:
            await served.stub.ResumeTask(runner_pb2.ResumeTaskRequest(**key_of(agg.id)))
        assert served.task(agg).state is TaskState.SLEEPING
        runs = await served.tails.list_runs("follow", agg.id)

    assert sleeping.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert sleeping.value.details() == (
        f"task follow/{agg.id} is SLEEPING: only a SUSPENDED or STOPPED task can be resumed"
    )
    assert {run.outcome for run in runs} == {"eof"}, "the refused resume recorded no run"


async def test_a_control_that_waits_for_a_stubborn_run_is_shown_pending(
    journal: LoopbackJournal,
) -> None:
    agg = new_aggregate()
    ids = await append(journal, agg, 1)
    behaviour = Behaviour(stubborn={agg.id})
    key = key_of(agg.id)
    async with serve_runner(journal, [behaviour.activity()], control_timeout=0.2) as served:
        with anyio.fail_after(5):
            await behaviour.parked_event(agg.id).wait()

        pending = await served.stub.StopTask(runner_pb2.StopTaskRequest(**key))
        still = await served.stub.GetTask(runner_pb2.GetTaskRequest(**key))
        behaviour.release.set()  # the activity lets its cancellation land
        await served.changes.wait_until(lambda: served.task(agg).state is TaskState.STOPPED)
        stopped = await served.stub.GetTask(runner_pb2.GetTaskRequest(**key))

    assert (pending.state, pending.pending_control) == (State.RUNNING, "stop")
    assert (still.state, still.pending_control) == (State.RUNNING, "stop")
    assert (stopped.state, stopped.pending_control, stopped.tail) == (
        State.STOPPED,
        "",
        str(ids[-1]),
    )


def control_not_stored(error: grpc.aio.AioRpcError) -> bool:
    """The status carries the ErrorInfo that says: applied in memory, not stored."""
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return (info.domain, info.reason) == (ERROR_DOMAIN, CONTROL_NOT_STORED)
    return False


async def test_a_control_the_engine_could_not_store_is_reported_unavailable(
    journal: LoopbackJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The engine's side of the contract: it applies the control in memory and
    # raises StoreError when the state could not be stored.
    agg = new_aggregate()
    await append(journal, agg, 1)

    async def stop_but_fail_to_store(self: Engine, task: Task) -> None:
        raise StoreError("tail store tails.db: save_with_run failed: disk I/O error")

    async with serve_runner(journal, [Behaviour().activity()]) as served:
        await served.settled(agg)
        monkeypatch.setattr(Engine, "stop", stop_but_fail_to_store)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await served.stub.StopTask(runner_pb2.StopTaskRequest(**key_of(agg.id)))

    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    details = info.value.details()
    assert details.startswith(f"task follow/{agg.id}: stop is applied in memory but not yet stored")
    assert "disk I/O error" in details and "keeps retrying" in details
    assert control_not_stored(info.value)


class FailingSaves(MemoryTailStore):
    """A memory store whose saves fail while ``failing`` is set (reads still work)."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = False

    async def save(self, record: TailRecord) -> None:
        if self.failing:
            raise StoreError("tail store memory: save failed: the disk is full")
        await super().save(record)

    async def save_with_run(self, record: TailRecord, run: RunRecord) -> None:
        if self.failing:
            raise StoreError("tail store memory: save_with_run failed: the disk is full")
        await super().save_with_run(record, run)


async def test_a_stop_whose_save_fails_is_reported_not_forgotten(
    journal: LoopbackJournal,
) -> None:
    agg = new_aggregate()
    await append(journal, agg, 1)
    tails = FailingSaves()
    async with serve_runner(journal, [Behaviour().activity()], tails=tails) as served:
        await served.settled(agg)
        tails.failing = True
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await served.stub.StopTask(runner_pb2.StopTaskRequest(**key_of(agg.id)))
        in_memory = served.task(agg).state
        tails.failing = False

    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "stop is applied in memory but not yet stored" in info.value.details()
    assert control_not_stored(info.value)
    assert in_memory is TaskState.STOPPED
