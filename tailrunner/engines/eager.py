"""The eager engine: one open watch stream per task.

Each task's activity reads ``Events(watch=true)``, which blocks for new
events. When the stream breaks or the activity returns, the engine re-opens
it from the returned tail: at once after progress, after the retry backoff
after an error, and never again after ``Done``. An activity that just
iterates never returns: the engine stores its progress each time its reader
catches up. Eager tasks hold a stream for as long as they run, so the
capacity limit must exceed the task count; tasks beyond it wait for a slot
(logged once, and shown as waiting for capacity).
"""

from __future__ import annotations

from typing import ClassVar

from tailrunner.engines.base import Engine
from tailrunner.engines.execute import RunResult
from tailrunner.engines.task import Task, Waiting
from tailrunner.states import TaskState, WaitReason


class EagerEngine(Engine):
    name: ClassVar[str] = "eager"
    watch: ClassVar[bool] = True

    def _after_eof(
        self, task: Task, result: RunResult, now: float
    ) -> tuple[TaskState, float | None]:
        if result.progressed or task.signalled:
            return TaskState.PENDING, None
        # An activity that returns EOF without progress (say, at will_block)
        # would spin on re-opening; give it the first backoff step instead.
        return TaskState.SLEEPING, now + self._policy(task).initial

    def _sleeping(self, task: Task) -> Waiting:
        return Waiting(reason=WaitReason.REOPEN, next_run_at=self._wall_time(task.due))
