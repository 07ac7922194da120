"""A loop-lag watchdog: names the plugin code that blocks the runner's event loop.

Every activity of a runner shares one event loop; an activity that blocks it
(``time.sleep``, a synchronous HTTP call, a long computation) stalls every
other run, the journal's keepalive and the admin service with it. The
watchdog notices and says who:

- a heartbeat task on the loop stamps the time every ``threshold / 4``;
- an OS thread checks the stamp; when the loop has not come back for more
  than ``threshold`` seconds, it reads the loop thread's stack
  (``sys._current_frames()``), finds the engine's run (the activity and its
  aggregate) and the activity's own frame (its file and line, and the
  innermost frame, where it blocks), and logs ``event loop blocked``;
- when the loop comes back, ``event loop was blocked`` with the stall's
  duration and the same names. One stall, two lines, however long it lasts.

``engine.loop_lag_warning`` in config sets the threshold (1 s by default;
0 turns the watchdog off). The thread only reads; it costs one wake-up per
quarter threshold.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import CodeType, FrameType

import anyio
import structlog
from anyio.abc import TaskStatus

from tailrunner.activities.decorator import Activity
from tailrunner.engines.execute import _Run

log = structlog.get_logger(__name__)

#: Seconds without the loop coming back before the watchdog warns.
DEFAULT_THRESHOLD = 1.0

#: The engine's run of one task (its ``self`` is the run) and the call of
#: the activity's function (the frame inside it is the activity's own).
_RUN_CODE: CodeType = _Run.execute.__code__
_CALL_CODE: CodeType = Activity.__call__.__code__
#: Frames walked at most (a runaway recursion must not stall the watchdog).
_MAX_DEPTH = 500


@dataclass(slots=True)
class Stall:
    """One stall of the loop, as the watchdog saw it."""

    #: When the loop last stamped the heartbeat before it stalled (monotonic).
    since: float
    #: What the log lines say: activity, aggregate, where …
    fields: dict[str, object] = field(default_factory=dict)
    #: Seconds it lasted (set when it ended).
    seconds: float | None = None


class LoopWatchdog:
    """Warns when the event loop it runs on makes no progress for ``threshold`` seconds.

    ::

        async with anyio.create_task_group() as tg:
            await tg.start(LoopWatchdog(threshold=1.0).run)

    :param threshold: seconds; must be positive (the runner does not start
        one for 0).
    """

    def __init__(self, threshold: float = DEFAULT_THRESHOLD) -> None:
        if threshold <= 0:
            raise ValueError(f"threshold {threshold}: must be positive")
        self.threshold = threshold
        self._tick = threshold / 4
        self._beat = time.monotonic()
        self._stop = threading.Event()
        #: Stalls seen so far, and the longest.
        self.stalls = 0
        self.longest = 0.0
        self._observers: list[Callable[[float], None]] = []

    def add_observer(self, observer: Callable[[float], None]) -> None:
        """Call ``observer(seconds)`` when a stall ends, from the watchdog's thread."""
        self._observers.append(observer)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Watch the loop this runs on until cancelled."""
        self._stop.clear()
        self._beat = time.monotonic()
        watcher = threading.Thread(
            target=self._watch,
            args=(threading.get_ident(),),
            name="tailrunner-loop-watchdog",
            daemon=True,
        )
        watcher.start()
        task_status.started()
        try:
            while True:
                self._beat = time.monotonic()
                await anyio.sleep(self._tick)
        finally:
            # The thread wakes at once and ends; not joined: it holds nothing.
            self._stop.set()

    def _watch(self, loop_thread: int) -> None:
        stall: Stall | None = None
        while not self._stop.wait(self._tick):
            beat = self._beat
            if stall is None:
                late = time.monotonic() - beat - self._tick
                if late > self.threshold:
                    stall = Stall(since=beat, fields=blocking(loop_thread))
                    log.warning("event loop blocked", seconds=round(late, 3), **stall.fields)
            elif beat != stall.since:  # the loop came back
                stall.seconds = max(0.0, beat - stall.since - self._tick)
                self.stalls += 1
                self.longest = max(self.longest, stall.seconds)
                log.warning(
                    "event loop was blocked", seconds=round(stall.seconds, 3), **stall.fields
                )
                for observer in list(self._observers):
                    try:
                        observer(stall.seconds)
                    except Exception as exc:  # the watchdog must outlive a bad observer
                        log.error("watchdog observer failed", error=str(exc))
                stall = None


def blocking(thread_id: int) -> dict[str, object]:
    """Who blocks the thread ``thread_id`` now: the run's activity and aggregate, and where.

    ``where`` is the innermost Python frame (the line that blocks, maybe in a
    library); ``activity_code`` the line of the activity's own function
    that led there. Without a run on the stack (the engine's own code, say)
    only ``where``.
    """
    frame: FrameType | None = sys._current_frames().get(thread_id)
    if frame is None:
        return {}
    found: dict[str, object] = {"where": _place(frame)}
    inner: FrameType | None = None
    for _ in range(_MAX_DEPTH):
        if frame is None:
            break
        code = frame.f_code
        if code is _CALL_CODE and inner is not None and "activity_code" not in found:
            found["activity_code"] = _place(inner)
        elif code is _RUN_CODE:
            run = frame.f_locals.get("self")
            if isinstance(run, _Run):
                found.update(run.task.log_fields())
            break
        inner, frame = frame, frame.f_back
    return found


def _place(frame: FrameType) -> str:
    return f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
