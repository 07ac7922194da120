"""tailrunner's benchmarks: each figure beside a baseline measured in the same run.

``python -m bench [--quick] [--only NAME] [--json PATH]``; see bench/README.md.
"""

#: The benchmark modules, in the order they run (``bench/<name>.py``).
BENCHMARKS = (
    "stream_throughput",
    "wakeup_latency",
    "many_tasks",
    "journal_appends",
    "append_ceiling",
    "signal_fanout",
    "peer_eventsourcing",
    "cron_tick",
    "operation_wait",
    "pg_journal",
    "scaleout_throughput",
)
