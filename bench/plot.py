"""Draw a results file to SVG: ``python -m bench.plot [RESULTS.json] [OUT.svg]``.

Also ``python -m bench --plot``. Two panels:

- every figure's ratio (tailrunner / baseline) as a bar on a log scale, its
  goal drawn across the bar when the goal is on the ratio, and the bar
  coloured by whether its goal is met (grey: no goal). A goal on the value
  (memory per task, say) is written beside the bar instead;
- the latency figures (names ending ``pNN``): tailrunner's and the
  baseline's percentiles side by side. The benchmarks store percentiles,
  not their samples, so this is the p50/p99 each run measured, not a full
  distribution; a figure that carries ``samples`` (``{"tailrunner": [...],
  "baseline": [...]}``, in seconds or its unit) is drawn as its distribution
  (an empirical CDF) instead.

matplotlib's SVG backend draws it: no display is needed (CI, a server).
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("svg")  # before pyplot: never look for a display
matplotlib.rcParams["svg.hashsalt"] = "tailrunner"  # stable ids: a clean diff
matplotlib.rcParams["svg.fonttype"] = "none"  # text as text: small, searchable, diffable

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure as PlotFigure  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_RESULTS = HERE / "results" / "latest.json"
#: A tracked place: bench/results/ is git-ignored, and README shows this picture.
DEFAULT_SVG = HERE / "plot.svg"

MET, MISSED, NO_GOAL = "#2e7d32", "#c62828", "#9e9e9e"
OURS, BASELINE = "#1565c0", "#9e9e9e"
_PERCENTILE = re.compile(r"^(?P<base>.*?)\s+p(?P<p>\d+(?:\.\d+)?)$")


def figures(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every figure of a results file, in its order (crashed benchmarks have none)."""
    return [f for bench in results["benchmarks"].values() for f in bench.get("figures", ())]


def _colour(figure: dict[str, Any]) -> str:
    met = figure.get("met")
    return NO_GOAL if met is None else (MET if met else MISSED)


def _finite_positive(x: float) -> bool:
    return x > 0 and x != float("inf")


def draw_ratios(ax: Axes, rows: Sequence[dict[str, Any]]) -> None:
    """Horizontal ratio bars on a log scale, with each ratio goal across its bar."""
    names = [f["name"] for f in rows]
    ratios = [f["ratio"] if _finite_positive(f["ratio"]) else float("nan") for f in rows]
    y = list(range(len(rows)))
    ax.barh(y, ratios, color=[_colour(f) for f in rows], height=0.6)
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=0.8)
    for i, figure in enumerate(rows):
        spec = figure.get("goal_spec")
        if spec and spec["on"] == "ratio":
            ax.plot([spec["limit"]] * 2, [i - 0.42, i + 0.42], color="black", linewidth=2.2)
        label = f"{figure['ratio']:.2f}"
        if figure.get("goal"):
            label += f"  (goal {figure['goal']}" + (
                f": {figure['tailrunner']:.3g} {figure['unit']})"
                if spec and spec["on"] == "value"
                else ")"
            )
        # Right of both the bar and its goal, so that neither hides the text.
        limit = spec["limit"] if spec and spec["on"] == "ratio" else 0.0
        x = max(ratios[i] if ratios[i] == ratios[i] else 1.0, limit)
        ax.annotate(
            label, (x, i), xytext=(5, 0), textcoords="offset points", va="center", fontsize=7
        )
    finite = [r for r in ratios if r == r]
    limits = [
        f["goal_spec"]["limit"] for f in rows if (f.get("goal_spec") or {}).get("on") == "ratio"
    ]
    if finite:
        # Room on the right for the longest label (a log axis: a factor).
        ax.set_xlim(min(finite + limits) / 1.5, max(finite + limits) * 12)
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(
        "tailrunner / baseline (log); higher is better for rates, lower for times and memory"
    )
    ax.set_title("Each figure against its baseline; black bar: the goal", fontsize=9)
    ax.grid(axis="x", which="both", linewidth=0.3)


def latency_groups(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Latency figures grouped by name without their percentile (``… p50``, ``… p99``)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for figure in rows:
        match = _PERCENTILE.match(figure["name"])
        if match:
            groups.setdefault(match["base"], []).append(figure)
    return groups


def _percentile(figure: dict[str, Any]) -> float:
    match = _PERCENTILE.match(figure["name"])
    return float(match["p"]) if match else 0.0


def draw_latencies(ax: Axes, groups: dict[str, list[dict[str, Any]]]) -> None:
    """Percentiles side by side per group, or a distribution where samples exist."""
    with_samples = [f for g in groups.values() for f in g if f.get("samples")]
    if with_samples:
        for figure in with_samples:
            for who, colour in (("tailrunner", OURS), ("baseline", BASELINE)):
                values = sorted(figure["samples"].get(who, ()))
                if values:
                    share = [(i + 1) / len(values) for i in range(len(values))]
                    ax.step(
                        values, share, where="post", color=colour, label=f"{figure['name']}: {who}"
                    )
        ax.set_xscale("log")
        ax.set_ylabel("share of samples at or below")
        ax.set_xlabel(with_samples[0]["unit"])
        ax.legend(fontsize=7)
        ax.set_title("Latency distributions", fontsize=9)
        return
    labels: list[str] = []
    ours: list[float] = []
    base: list[float] = []
    unit = ""
    for group in groups.values():
        for figure in sorted(group, key=_percentile):
            name = figure["name"].removeprefix("wake-up latency ")
            labels.append(textwrap.fill(name, 22))
            ours.append(figure["tailrunner"])
            base.append(figure["baseline"])
            unit = figure["unit"]
    x = list(range(len(labels)))
    width = 0.38
    ax.bar([i - width / 2 for i in x], ours, width, color=OURS, label="tailrunner")
    ax.bar([i + width / 2 for i in x], base, width, color=BASELINE, label="baseline")
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel(unit)
    ax.legend(fontsize=7)
    ax.set_title("Latency percentiles (the runs store p50/p99, not their samples)", fontsize=9)
    ax.grid(axis="y", linewidth=0.3)


def plot(results: dict[str, Any]) -> PlotFigure:
    """The picture of one results file (see the module's docstring)."""
    rows = figures(results)
    groups = latency_groups(rows)
    panels = 2 if groups else 1
    height = max(3.0, 0.22 * len(rows) + 1.5)
    fig, axes = plt.subplots(
        panels,
        1,
        figsize=(10, height + (3.2 if groups else 0)),
        gridspec_kw={"height_ratios": [height, 3.2] if groups else [1]},
        squeeze=False,
    )
    if rows:
        draw_ratios(axes[0][0], rows)
    else:
        axes[0][0].text(0.5, 0.5, "no figures (every benchmark crashed?)", ha="center")
    if groups:
        draw_latencies(axes[1][0], groups)
    machine = results.get("machine", {})
    fig.suptitle(
        f"tailrunner benchmarks, {str(results.get('date', '?'))[:16].replace('T', ' ')} UTC,"
        f" commit {results.get('commit') or '?'}, {machine.get('cores', '?')} cores"
        f" ({machine.get('cpu', '?')}), Python {machine.get('python', '?')}"
        f"{', --quick' if results.get('quick') else ''}",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def write(results_path: Path = DEFAULT_RESULTS, out: Path = DEFAULT_SVG) -> Path:
    """Draw ``results_path`` to ``out`` (SVG); returns ``out``."""
    results = json.loads(results_path.read_text())
    fig = plot(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    # No date in the file: the same results draw the same bytes (a clean diff).
    fig.savefig(out, format="svg", metadata={"Date": None})
    plt.close(fig)
    return out


def main(argv: Sequence[str] = sys.argv[1:]) -> None:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return
    if len(argv) > 2:
        sys.exit("usage: python -m bench.plot [RESULTS.json] [OUT.svg]")
    results = Path(argv[0]) if argv else DEFAULT_RESULTS
    out = Path(argv[1]) if len(argv) > 1 else DEFAULT_SVG
    print(f"plot: {write(results, out)}", file=sys.stderr)


if __name__ == "__main__":
    main()
