"""bench/plot.py draws a small results file to SVG, with no display (as in CI)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SIGN = {">=": "≥", "<=": "≤"}  # as bench.common.Goal writes a goal


def figure(
    name: str, ours: float, base: float, goal: dict[str, Any] | None, unit: str
) -> dict[str, Any]:
    ratio = ours / base
    met = None
    if goal is not None:
        x = ratio if goal["on"] == "ratio" else ours
        met = x >= goal["limit"] if goal["op"] == ">=" else x <= goal["limit"]
    return {
        "name": name,
        "unit": unit,
        "tailrunner": ours,
        "baseline": base,
        "baseline_name": "a bare loop",
        "higher_is_better": unit.endswith("/s"),
        "goal": None if goal is None else f"{goal['on']} {SIGN[goal['op']]} {goal['limit']:g}",
        "goal_spec": goal,
        "note": "",
        "ratio": ratio,
        "met": met,
    }


RESULTS = {
    "date": "2026-12-01T19:28:18+00:00",
    "commit": "abc1234",
    "quick": True,
    "machine": {"cores": 2, "cpu": "a test CPU", "python": "3.11.7"},
    "benchmarks": {
        "stream_throughput": {
            "seconds": 1.0,
            "figures": [
                figure(
                    "stream throughput",
                    300.0,
                    1000.0,
                    {"on": "ratio", "op": ">=", "limit": 0.7},
                    "events/s",
                )
            ],
        },
        "wakeup_latency": {
            "seconds": 1.0,
            "figures": [
                figure("wake-up latency lazy p50", 5.0, 2.0, None, "ms"),
                figure(
                    "wake-up latency lazy p99",
                    8.0,
                    3.0,
                    {"on": "ratio", "op": "<=", "limit": 2.0},
                    "ms",
                ),
            ],
        },
        "many_tasks": {
            "seconds": 1.0,
            "figures": [
                figure(
                    "many tasks: memory per lazy task",
                    0.45,
                    0.4,
                    {"on": "value", "op": "<=", "limit": 0.5},
                    "KiB",
                )
            ],
        },
        "pg_journal": {"seconds": 1.0, "error": "exit status 1"},
    },
}


def test_plot_writes_svg_with_every_figure(tmp_path: Path) -> None:
    results = tmp_path / "latest.json"
    results.write_text(json.dumps(RESULTS))
    out = tmp_path / "plot.svg"
    # A fresh interpreter without DISPLAY: the module must pick its backend itself.
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "MPLCONFIGDIR": str(tmp_path / "mpl")}
    subprocess.run(
        [sys.executable, "-m", "bench.plot", str(results), str(out)], cwd=ROOT, env=env, check=True
    )
    svg = out.read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    # Text is kept as text (svg.fonttype "none"): every figure is named, the
    # crashed benchmark has none, and the latency panel says what it shows.
    for name in (
        "stream throughput",
        "wake-up latency lazy p99",
        "many tasks: memory per lazy task",
        "commit abc1234",
        "lazy p50",
        "not their samples",
    ):
        assert name in svg, name
    assert "goal value ≤ 0.5: 0.45 KiB" in svg


def test_plot_draws_the_same_bytes_twice(tmp_path: Path) -> None:
    from bench.plot import write

    results = tmp_path / "latest.json"
    results.write_text(json.dumps(RESULTS))
    first = write(results, tmp_path / "a.svg").read_bytes()
    second = write(results, tmp_path / "b.svg").read_bytes()
    assert first == second
