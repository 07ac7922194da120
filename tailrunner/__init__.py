"""tailrunner: run plugin activities over the event streams of event-sourced aggregates.

This module is the plugin author's API, and nothing else:

- :func:`activity` makes an async function an :class:`Activity`;
  :data:`hookimpl` marks the plugin hook that returns them;
- the outcomes an activity reports: :class:`Done`, :class:`EOF`,
  :class:`SilentRetry`, :class:`SilentRetryAfter`, :class:`Failed`
  (:data:`Outcome` is their union);
- what a run is handed: :class:`ActivityContext`, :class:`EventStream` of
  :class:`Event`; and for activities that append, :class:`AggregateRef` and
  :class:`NewEvent`.

The package's map: ``activities/`` (the contract above), ``engines/`` (lazy,
eager, cron and their shared machinery), ``journal/`` (the event journal's
gRPC service, client and stores), ``tails/`` (where each task's tail is
stored), ``admin/`` (the runner's operator service and metrics), ``cli/``,
``config``, ``plugins`` and ``runner``; ``testing`` is the kit for test
authors (fake streams, a loopback journal, pytest fixtures).
"""

from importlib import metadata as _metadata

from tailrunner.activities import (
    EOF,
    Activity,
    ActivityContext,
    Done,
    EventStream,
    Failed,
    Outcome,
    SilentRetry,
    SilentRetryAfter,
    activity,
)
from tailrunner.hooks import hookimpl
from tailrunner.model import AggregateRef, Event, NewEvent

__version__ = _metadata.version("tailrunner")

__all__ = [
    "EOF",
    "Activity",
    "ActivityContext",
    "AggregateRef",
    "Done",
    "Event",
    "EventStream",
    "Failed",
    "NewEvent",
    "Outcome",
    "SilentRetry",
    "SilentRetryAfter",
    "__version__",
    "activity",
    "hookimpl",
]
