"""``python -m bench [--quick] [--only NAME …] [--json PATH] [--markdown] | --plot``.

Runs each benchmark module in a fresh interpreter, prints one table of every
figure beside its baseline, and writes the results as JSON. A missed goal is
reported, not failed: the exit status is non-zero only when a benchmark
crashed (or overran its time limit), so that CI's ``--quick`` smoke run
catches benchmarks that rot, not machines that are slow.

``--plot`` runs nothing: it draws the results at ``--json`` (the latest run)
to SVG (``--svg``, default ``bench/plot.svg``, which README shows); see
:mod:`bench.plot`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import BENCHMARKS
from bench.common import child_env, python_command

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "latest.json"
#: Seconds one benchmark may take before it counts as crashed.
TIME_LIMIT = {True: 300, False: 3600}


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=HERE.parent,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def run_one(name: str, quick: bool) -> dict[str, Any]:
    """Run ``bench.<name>`` in a subprocess; its figures, or the error."""
    with tempfile.TemporaryDirectory(prefix="tailrunner-bench-") as tmp:
        out = Path(tmp) / "figures.json"
        command = python_command(f"bench.{name}", "--out", str(out))
        if quick:
            command.append("--quick")
        start = time.monotonic()
        try:
            proc = subprocess.run(command, env=child_env(), timeout=TIME_LIMIT[quick], check=False)
        except subprocess.TimeoutExpired:
            return {"seconds": time.monotonic() - start, "error": "time limit exceeded"}
        seconds = time.monotonic() - start
        if proc.returncode != 0 or not out.exists():
            return {"seconds": seconds, "error": f"exit status {proc.returncode}"}
        return {"seconds": seconds, "figures": json.loads(out.read_text())}


def fmt(value: float) -> str:
    if value != value or value in (float("inf"), float("-inf")):
        return str(value)
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def rows(results: dict[str, dict[str, Any]]) -> list[list[str]]:
    table = []
    for name, result in results.items():
        if "error" in result:
            table.append([name, "", "CRASHED", result["error"], "", "", ""])
            continue
        for figure in result["figures"]:
            met = figure["met"]
            table.append(
                [
                    figure["name"],
                    figure["unit"],
                    fmt(figure["tailrunner"]),
                    fmt(figure["baseline"]),
                    f"{figure['ratio']:.2f}",
                    figure["goal"] or "",
                    "" if met is None else ("yes" if met else "NO"),
                ]
            )
    return table


HEADER = ["benchmark", "unit", "tailrunner", "baseline", "ratio", "goal", "met?"]


def text_table(table: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [HEADER, *table]) for i in range(len(HEADER))]
    right = {2, 3, 4}

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(HEADER), line(["-" * w for w in widths]), *map(line, table)])


def markdown_table(table: list[list[str]]) -> str:
    out = ["| " + " | ".join(HEADER) + " |", "|" + "|".join(["---"] * len(HEADER)) + "|"]
    out += ["| " + " | ".join(cells) + " |" for cells in table]
    return "\n".join(out)


def baselines(results: dict[str, dict[str, Any]]) -> str:
    lines = []
    for result in results.values():
        for figure in result.get("figures", ()):
            lines.append(
                f"- {figure['name']}: baseline = {figure['baseline_name']}; {figure['note']}"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run with small sizes")
    parser.add_argument(
        "--only",
        action="append",
        choices=BENCHMARKS,
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}",
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument(
        "--plot",
        action="store_true",
        help="run nothing: draw the results at --json to SVG (--svg)",
    )
    parser.add_argument(
        "--svg", type=Path, default=HERE / "plot.svg", help="where --plot writes its picture"
    )
    args = parser.parse_args()
    if args.plot:
        from bench.plot import write  # matplotlib only when drawing

        print(f"plot: {write(args.json, args.svg)}", file=sys.stderr)
        return
    selected = [name for name in BENCHMARKS if not args.only or name in args.only]

    started = datetime.now(UTC)
    commit = git_commit()
    results: dict[str, dict[str, Any]] = {}
    for name in selected:
        print(f"bench: {name} …", file=sys.stderr, flush=True)
        results[name] = run_one(name, args.quick)
        status = results[name].get("error", "done")
        print(f"bench: {name} {status} in {results[name]['seconds']:.1f} s", file=sys.stderr)

    info = machine()
    header = (
        f"tailrunner benchmarks, {started:%Y-%m-%d %H:%M} UTC, commit {commit or '?'},"
        f" {info['cores']} cores ({info['cpu']}), Python {info['python']}"
        f"{', --quick' if args.quick else ''}"
    )
    table = rows(results)
    print(header)
    print()
    print(markdown_table(table) if args.markdown else text_table(table))
    print()
    print(baselines(results))

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "date": started.isoformat(),
                "commit": commit,
                "quick": args.quick,
                "machine": info,
                "benchmarks": results,
            },
            indent=2,
        )
    )
    print(f"\nresults: {args.json}", file=sys.stderr)
    sys.exit(1 if any("error" in r for r in results.values()) else 0)


if __name__ == "__main__":
    main()
