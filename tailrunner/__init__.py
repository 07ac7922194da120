"""tailrunner: run plugin activities over the event streams of event-sourced aggregates.

This module exports the activity API and nothing else; the engines, the
journal and the stores live in modules that plugin authors need not import.
"""

from tailrunner.activities import (
    EOF,
    Activity,
    ActivityContext,
    Done,
    EventStream,
    Failed,
    SilentRetry,
    SilentRetryAfter,
    activity,
)
from tailrunner.model import AggregateRef, Event

__version__ = "0.1.0"

__all__ = [
    "EOF",
    "Activity",
    "ActivityContext",
    "AggregateRef",
    "Done",
    "Event",
    "EventStream",
    "Failed",
    "SilentRetry",
    "SilentRetryAfter",
    "__version__",
    "activity",
]
