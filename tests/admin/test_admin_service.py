"""The tailrunner.v1.Runner service over real gRPC: listing, inspecting and controlling tasks."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import code_pb2, error_details_pb2
from grpc_status import rpc_status

from tailrunner.proto.v1 import runner_pb2
from tailrunner.states import TaskState
from tailrunner.tails.memory import MemoryTailStore
from tailrunner.tails.sqlite import SQLiteTailStore
from tailrunner.tails.store import TailRecord, TailStore, query_cursor
from tailrunner.testing import LoopbackJournal

from .conftest import Behaviour, append, fast_options, new_aggregate, serve_runner

State = runner_pb2.Task.State


async def _all_tasks(
    served_stub: object, page_size: int, **filters: object
) -> tuple[list[runner_pb2.Task], int]:
    """Every task page after page, and how many pages it took."""
    stub = served_stub
    tasks: list[runner_pb2.Task] = []
    token, pages = "", 0
    while True:
        response = await stub.ListTasks(  # type: ignore[attr-defined]
            runner_pb2.ListTasksRequest(page_size=page_size, page_token=token, **filters)
        )
        tasks.extend(response.tasks)
        pages += 1
        token = response.next_page_token
        if not token:
            return tasks, pages


@pytest.fixture(params=["memory", "sqlite"])
async def tails(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TailStore]:
    store: TailStore
    if request.param == "memory":
        store = MemoryTailStore()
    else:
        store = await SQLiteTailStore.open(tmp_path / "tails.db")
    try:
        yield store
    finally:
        await store.aclose()


async def test_list_tasks_pages_newest_first_without_gaps_or_repeats(
    journal: LoopbackJournal, tails: TailStore
) -> None:
    aggregates = [new_aggregate() for _ in range(7)]
    for agg in aggregates:
        await append(journal, agg, 2)
    behaviour = Behaviour()
    async with serve_runner(journal, [behaviour.activity()], tails=tails) as served:
        await served.settled(*aggregates)

        tasks, pages = await _all_tasks(served.stub, page_size=3)

        stored = await served.tails.query(limit=100)
    assert pages == 3
    assert [t.aggregate_id for t in tasks] == [str(r.aggregate.id) for r in stored]
    assert sorted(stored, key=query_cursor, reverse=True) == stored
    assert {t.aggregate_id for t in tasks} == {str(a.id) for a in aggregates}
    first = tasks[0]
    assert first.activity == "follow" and first.aggregate_type == "thing"
    assert first.state == State.SLEEPING and first.live
    assert first.lag == 0 and first.head == first.tail
    assert first.last_run_outcome == "eof"
    assert first.HasField("update_time") and first.HasField("last_run_end_time")


async def test_list_tasks_filters_by_state_activity_type_and_time(
    journal: LoopbackJournal, tails: TailStore
) -> None:
    poisoned, healthy, other_type = new_aggregate(), new_aggregate(), new_aggregate("other")
    for agg in (poisoned, healthy, other_type):
        await append(journal, agg, 1)
    behaviour = Behaviour(fail={poisoned.id})
    activities = [behaviour.activity(), behaviour.activity("audit", ("thing", "other"))]
    options = fast_options(max_attempts=1)
    async with serve_runner(journal, activities, tails=tails, options=options) as served:
        await served.settled(poisoned, healthy)
        await served.settled(poisoned, healthy, other_type, activity="audit")

        suspended, _ = await _all_tasks(served.stub, 10, states=[State.SUSPENDED])
        audit, _ = await _all_tasks(served.stub, 10, activity="audit")
        others, _ = await _all_tasks(served.stub, 10, aggregate_type="other")
        future = _timestamp(datetime.now(UTC) + timedelta(hours=1))
        past = _timestamp(datetime.now(UTC) - timedelta(hours=1))
        none_after, _ = await _all_tasks(served.stub, 10, updated_after=future)
        none_before, _ = await _all_tasks(served.stub, 10, updated_before=past)
        all_before, _ = await _all_tasks(served.stub, 10, updated_before=future)

    assert {(t.activity, t.aggregate_id) for t in suspended} == {
        ("follow", str(poisoned.id)),
        ("audit", str(poisoned.id)),
    }
    assert all(t.last_error == "ValueError: poison event" for t in suspended)
    assert all(t.attempts == 1 for t in suspended)
    assert {t.activity for t in audit} == {"audit"} and len(audit) == 3
    assert [(t.activity, t.aggregate_id) for t in others] == [("audit", str(other_type.id))]
    assert none_after == [] and none_before == []
    assert len(all_before) == 5


async def test_running_tasks_are_listed_first(journal: LoopbackJournal) -> None:
    busy, idle = new_aggregate(), new_aggregate()
    await append(journal, busy, 1)
    await append(journal, idle, 1)
    behaviour = Behaviour(park={busy.id})
    async with serve_runner(journal, [behaviour.activity()]) as served:
        with anyio.fail_after(5):
            await behaviour.parked_event(busy.id).wait()
        await served.settled(idle)

        tasks, _ = await _all_tasks(served.stub, 10)
        running, _ = await _all_tasks(served.stub, 10, states=[State.RUNNING])

    assert [(t.aggregate_id, t.state) for t in tasks] == [
        (str(busy.id), State.RUNNING),
        (str(idle.id), State.SLEEPING),
    ]
    assert [t.aggregate_id for t in running] == [str(busy.id)]


async def test_a_page_token_works_only_with_its_filter(journal: LoopbackJournal) -> None:
    aggregates = [new_aggregate() for _ in range(3)]
    for agg in aggregates:
        await append(journal, agg, 1)
    async with serve_runner(journal, [Behaviour().activity()]) as served:
        await served.settled(*aggregates)
        first = await served.stub.ListTasks(runner_pb2.ListTasksRequest(page_size=1))
        assert first.next_page_token

        with pytest.raises(grpc.aio.AioRpcError) as other_filter:
            await served.stub.ListTasks(
                runner_pb2.ListTasksRequest(
                    page_size=1, page_token=first.next_page_token, activity="follow"
                )
            )
        with pytest.raises(grpc.aio.AioRpcError) as garbage:
            await served.stub.ListTasks(runner_pb2.ListTasksRequest(page_token="nonsense"))
        with pytest.raises(grpc.aio.AioRpcError) as negative:
            await served.stub.ListTasks(runner_pb2.ListTasksRequest(page_size=-1))

    for error in (other_filter, garbage, negative):
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert other_filter.value.details().startswith("page_token: made for another filter")
    assert negative.value.details().startswith("page_size:")


async def test_a_field_error_travels_as_a_bad_request_detail(journal: LoopbackJournal) -> None:
    async with serve_runner(journal, [Behaviour().activity()]) as served:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await served.stub.ListTasks(runner_pb2.ListTasksRequest(page_size=-1))

    status = rpc_status.from_call(caught.value)
    assert status is not None
    assert status.code == code_pb2.INVALID_ARGUMENT
    [detail] = status.details
    bad_request = error_details_pb2.BadRequest()
    assert detail.Unpack(bad_request)
    [violation] = bad_request.field_violations
    assert violation.field == "page_size"
    assert caught.value.details() == f"page_size: {violation.description}"


async def test_get_task_reports_head_and_lag_until_the_task_catches_up(
    journal: LoopbackJournal,
) -> None:
    agg = new_aggregate()
    first = await append(journal, agg, 2)
    behaviour = Behaviour()
    async with serve_runner(journal, [behaviour.activity()]) as served:
        await served.settled(agg)
        key = {"activity": "follow", "aggregate_id": str(agg.id)}
        stopped = await served.stub.StopTask(runner_pb2.StopTaskRequest(**key))
        later = await append(journal, agg, 3)

        behind = await served.stub.GetTask(runner_pb2.GetTaskRequest(**key))

        await served.stub.ResumeTask(runner_pb2.ResumeTaskRequest(**key))
        await served.changes.wait_until(lambda: served.task(agg).tail == later[-1])
        caught_up = await served.stub.GetTask(runner_pb2.GetTaskRequest(**key))

    assert stopped.state == State.STOPPED
    assert (behind.state, behind.tail, behind.head, behind.lag) == (
        State.STOPPED,
        str(first[-1]),
        str(later[-1]),
        3,
    )
    assert (caught_up.head, caught_up.lag) == (str(later[-1]), 0)


async def test_unknown_tasks_are_not_found_and_bad_ids_are_invalid(
    journal: LoopbackJournal,
) -> None:
    stranger = str(uuid.uuid4())
    async with serve_runner(journal, [Behaviour().activity()]) as served:
        errors = []
        for call, request in [
            (served.stub.GetTask, runner_pb2.GetTaskRequest),
            (served.stub.ListRuns, runner_pb2.ListRunsRequest),
            (served.stub.SuspendTask, runner_pb2.SuspendTaskRequest),
            (served.stub.ResumeTask, runner_pb2.ResumeTaskRequest),
            (served.stub.StopTask, runner_pb2.StopTaskRequest),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call(request(activity="follow", aggregate_id=stranger))  # type: ignore[operator]
            errors.append(info.value)
        with pytest.raises(grpc.aio.AioRpcError) as bad_id:
            await served.stub.GetTask(
                runner_pb2.GetTaskRequest(activity="follow", aggregate_id="nope")
            )

    for error in errors:
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert f"task follow/{stranger}" in error.details()
    assert bad_id.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_id.value.details().startswith("aggregate_id: 'nope' is not a UUID")


async def test_list_runs_newest_first(journal: LoopbackJournal) -> None:
    agg = new_aggregate()
    await append(journal, agg, 1)
    async with serve_runner(journal, [Behaviour().activity()]) as served:
        await served.settled(agg)
        served_tail = (await append(journal, agg, 2))[-1]
        await served.changes.wait_until(lambda: served.task(agg).tail == served_tail)
        await served.settled(agg)

        runs = await served.stub.ListRuns(
            runner_pb2.ListRunsRequest(activity="follow", aggregate_id=str(agg.id))
        )
        one = await served.stub.ListRuns(
            runner_pb2.ListRunsRequest(activity="follow", aggregate_id=str(agg.id), page_size=1)
        )

    # A signal may wake the task once more without new events: count events, not runs.
    assert len(runs.runs) >= 2 and one.runs[0] == runs.runs[0]
    for newer, older in itertools.pairwise(runs.runs):
        assert newer.tail_before == older.tail_after
        assert newer.start_time.ToDatetime(tzinfo=UTC) >= older.end_time.ToDatetime(tzinfo=UTC)
    assert runs.runs[-1].tail_before == "" and runs.runs[0].tail_after == str(served_tail)
    assert sum(run.events_seen for run in runs.runs) == 3
    assert {run.outcome for run in runs.runs} == {"eof"}


async def test_stop_cancels_a_running_task_and_it_stays_stopped_after_a_restart(
    journal: LoopbackJournal,
) -> None:
    agg = new_aggregate()
    ids = await append(journal, agg, 2)
    behaviour = Behaviour(park={agg.id})
    tails = MemoryTailStore()
    key = {"activity": "follow", "aggregate_id": str(agg.id)}
    async with serve_runner(journal, [behaviour.activity()], tails=tails) as served:
        with anyio.fail_after(5):
            await behaviour.parked_event(agg.id).wait()

        stopped = await served.stub.StopTask(runner_pb2.StopTaskRequest(**key))

        assert served.runner.engine.running == 0
    assert (stopped.state, stopped.tail) == (State.STOPPED, str(ids[-1]))
    async with serve_runner(journal, [behaviour.activity()], tails=tails) as again:
        after_restart = await again.stub.GetTask(runner_pb2.GetTaskRequest(**key))
    assert after_restart.state == State.STOPPED
    assert behaviour.started_from[agg.id] == [None], "it never ran again"


async def test_resume_clears_a_poison_suspension(journal: LoopbackJournal) -> None:
    agg = new_aggregate()
    ids = await append(journal, agg, 1)
    behaviour = Behaviour(fail={agg.id})
    key = {"activity": "follow", "aggregate_id": str(agg.id)}
    async with serve_runner(
        journal, [behaviour.activity()], options=fast_options(max_attempts=2)
    ) as served:
        await served.changes.wait_until(lambda: served.task(agg).state is TaskState.SUSPENDED)
        poisoned = await served.stub.GetTask(runner_pb2.GetTaskRequest(**key))
        behaviour.fail.clear()  # the operator fixed the cause

        resumed = await served.stub.ResumeTask(runner_pb2.ResumeTaskRequest(**key))
        await served.changes.wait_until(lambda: served.task(agg).tail == ids[-1])
        healthy = await served.stub.GetTask(runner_pb2.GetTaskRequest(**key))

    assert (poisoned.state, poisoned.attempts) == (State.SUSPENDED, 2)
    assert poisoned.last_error == "ValueError: poison event"
    assert poisoned.last_run_outcome == "error"
    assert resumed.attempts == 0 and resumed.last_error == ""
    assert (healthy.state, healthy.lag, healthy.attempts) == (State.SLEEPING, 0, 0)


async def test_suspend_a_running_task_then_resume_it(journal: LoopbackJournal) -> None:
    agg = new_aggregate()
    await append(journal, agg, 1)
    behaviour = Behaviour(park={agg.id})
    key = {"activity": "follow", "aggregate_id": str(agg.id)}
    async with serve_runner(journal, [behaviour.activity()]) as served:
        with anyio.fail_after(5):
            await behaviour.parked_event(agg.id).wait()

        suspended = await served.stub.SuspendTask(runner_pb2.SuspendTaskRequest(**key))
        stored = await served.tails.get("follow", agg.id)
        behaviour.park.clear()
        resumed = await served.stub.ResumeTask(runner_pb2.ResumeTaskRequest(**key))
        await served.settled(agg)

        assert served.task(agg).state is TaskState.SLEEPING
    assert suspended.state == State.SUSPENDED
    assert stored is not None and stored.state == "SUSPENDED"
    assert resumed.state in (State.PENDING, State.RUNNING, State.SLEEPING)
    assert len(behaviour.started_from[agg.id]) == 2


async def test_restart_replays_from_a_tail_or_from_the_start(journal: LoopbackJournal) -> None:
    agg, elsewhere = new_aggregate(), new_aggregate()
    ids = await append(journal, agg, 3)
    foreign = await append(journal, elsewhere, 1)
    behaviour = Behaviour(done={agg.id})
    key = {"activity": "follow", "aggregate_id": str(agg.id)}
    async with serve_runner(journal, [behaviour.activity()]) as served:
        await served.settled(agg, elsewhere)
        assert served.task(agg).state is TaskState.COMPLETE

        with pytest.raises(grpc.aio.AioRpcError) as stop_complete:
            await served.stub.StopTask(runner_pb2.StopTaskRequest(**key))
        with pytest.raises(grpc.aio.AioRpcError) as foreign_tail:
            await served.stub.RestartTask(
                runner_pb2.RestartTaskRequest(**key, from_tail=str(foreign[0]))
            )
        with pytest.raises(grpc.aio.AioRpcError) as no_origin:
            await served.stub.RestartTask(runner_pb2.RestartTaskRequest(**key))

        await served.stub.RestartTask(runner_pb2.RestartTaskRequest(**key, from_tail=str(ids[0])))
        await served.changes.wait_until(lambda: len(behaviour.started_from[agg.id]) == 2)
        await served.settled(agg)
        await served.stub.RestartTask(runner_pb2.RestartTaskRequest(**key, from_start=True))
        await served.changes.wait_until(lambda: len(behaviour.started_from[agg.id]) == 3)
        await served.settled(agg)

    assert stop_complete.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "COMPLETE" in stop_complete.value.details()
    assert foreign_tail.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert foreign_tail.value.details().startswith(f"from_tail: {foreign[0]} is not an event")
    assert no_origin.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert behaviour.started_from[agg.id] == [None, ids[0], None]


async def test_a_stored_task_this_runner_does_not_run_is_listed_but_not_controllable(
    journal: LoopbackJournal,
) -> None:
    agg = new_aggregate()
    await append(journal, agg, 1)
    tails = MemoryTailStore()
    await tails.save(
        TailRecord(
            activity="retired",
            aggregate=agg,
            tail=None,
            state="SUSPENDED",
            attempts=3,
            last_error="KeyError: 'x'",
            updated_at=datetime.now(UTC) - timedelta(days=1),
        )
    )
    key = {"activity": "retired", "aggregate_id": str(agg.id)}
    async with serve_runner(journal, [Behaviour().activity()], tails=tails) as served:
        await served.settled(agg)
        tasks, _ = await _all_tasks(served.stub, 10)
        shown = await served.stub.GetTask(runner_pb2.GetTaskRequest(**key))
        with pytest.raises(grpc.aio.AioRpcError) as resume:
            await served.stub.ResumeTask(runner_pb2.ResumeTaskRequest(**key))

    assert [(t.activity, t.live) for t in tasks] == [("follow", True), ("retired", False)]
    assert (shown.state, shown.attempts, shown.lag, shown.live) == (State.SUSPENDED, 3, 1, False)
    assert resume.value.code() == grpc.StatusCode.NOT_FOUND
    assert "this runner does not run it" in resume.value.details()


def _timestamp(value: datetime) -> Timestamp:
    message = Timestamp()
    message.FromDatetime(value)
    return message


async def test_a_reply_pairs_a_moving_tail_with_the_lag_counted_from_it(
    journal: LoopbackJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A running task's tail moves while its lag is counted: the reply shows the
    tail the lag was counted from, never a new tail beside an old lag."""
    import tailrunner.admin.service as service
    from tailrunner.admin.lag import Lag

    busy = new_aggregate()
    first, second = await append(journal, busy, 2)
    behaviour = Behaviour(park={busy.id})
    async with serve_runner(journal, [behaviour.activity()]) as served:
        with anyio.fail_after(5):
            await behaviour.parked_event(busy.id).wait()
        task = next(t for t in served.runner.engine.tasks() if t.aggregate == busy)
        task.tail = first  # parked one event before the head

        async def counting(journal_: object, aggregate_id: uuid.UUID, tail: object) -> Lag:
            task.tail = second  # the run checkpoints while the lag is counted
            return Lag(head=second, events=1)

        monkeypatch.setattr(service, "count_after", counting)
        reply = await served.stub.GetTask(
            runner_pb2.GetTaskRequest(activity="follow", aggregate_id=str(busy.id))
        )

    assert (reply.tail, reply.lag) == (str(first), 1)
