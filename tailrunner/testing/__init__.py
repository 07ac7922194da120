"""Tools for testing activities: fake streams, a loopback journal, and a harness.

Plugin authors get these as pytest fixtures (the ``tailrunner`` pytest11
plugin): ``fake_stream``, ``tailrunner_journal`` (a real journal server with a memory
store on 127.0.0.1) and ``run_activity`` (run one activity under an engine
until it is idle, returning the outcomes it produced).
"""

from tailrunner.testing.fakes import activity_context, fake_stream, make_events
from tailrunner.testing.harness import ActivityRun, run_activity
from tailrunner.testing.loopback import LoopbackJournal, loopback_journal

__all__ = [
    "ActivityRun",
    "activity_context",
    "LoopbackJournal",
    "fake_stream",
    "loopback_journal",
    "make_events",
    "run_activity",
]
