"""The activity contract, as plugin authors write against it.

``outcomes`` holds what a run reports (``Done``, ``EOF``, ``SilentRetry``,
``SilentRetryAfter``, ``Failed``); ``context`` the :class:`ActivityContext`
a run is handed (journal, logger, checkpoints, tail-store transactions);
``stream`` the :class:`EventStream` of events after the tail, which also
records how far a sequential reader got; ``decorator`` the ``@activity``
decorator and :class:`Activity`; ``builtin`` the activities tailrunner ships
(the demo's ``counter``), registered through its own entry point.
"""

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
