"""Tools for testing activities: fake streams, a loopback journal, and a harness.

Plugin authors get these as pytest fixtures (the ``tailrunner`` pytest11
plugin): ``fake_stream``, ``journal`` (a real journal server with a memory
store on 127.0.0.1) and ``run_activity`` (run one activity under an engine
until it is idle, returning the outcomes it produced).
"""

from tailrunner.testing.harness import ActivityRun, run_activity
from tailrunner.testing.loopback import LoopbackJournal, loopback_journal
from tailrunner.testing.streams import fake_stream, make_events

__all__ = [
    "ActivityRun",
    "LoopbackJournal",
    "fake_stream",
    "loopback_journal",
    "make_events",
    "run_activity",
]
