"""The activity contract: outcomes, context, stream, and the decorator."""

from tailrunner.activities.context import ActivityContext
from tailrunner.activities.decorator import Activity, ActivityFunc, activity
from tailrunner.activities.outcomes import EOF, Done, Failed, Outcome, SilentRetry, SilentRetryAfter
from tailrunner.activities.stream import EventStream

__all__ = [
    "EOF",
    "Activity",
    "ActivityContext",
    "ActivityFunc",
    "Done",
    "EventStream",
    "Failed",
    "Outcome",
    "SilentRetry",
    "SilentRetryAfter",
    "activity",
]
