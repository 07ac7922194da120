"""What every benchmark shares: figures and goals, timing, memory readings, subprocesses.

A benchmark module defines ``async def measure(quick: bool) -> list[Figure]``
and ends with ``if __name__ == "__main__": run_module(measure)``; ``python -m
bench`` runs each module in a fresh interpreter (grpc.aio keeps process-wide
state, and a crash then stays one benchmark's crash).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import psutil


@dataclass(frozen=True, slots=True, kw_only=True)
class Goal:
    """What a figure should reach: ``ratio`` or ``value`` ``op`` ``limit``."""

    on: str  # "ratio" (tailrunner / baseline) or "value" (the tailrunner figure)
    op: str  # ">=" or "<="
    limit: float

    def met(self, value: float, ratio: float) -> bool:
        x = ratio if self.on == "ratio" else value
        return x >= self.limit if self.op == ">=" else x <= self.limit

    def __str__(self) -> str:
        what = "ratio" if self.on == "ratio" else "value"
        return f"{what} {'≥' if self.op == '>=' else '≤'} {self.limit:g}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Figure:
    """One row of the table: the tailrunner figure beside its baseline from the same run."""

    name: str
    unit: str
    tailrunner: float
    baseline: float
    #: What the baseline is, in a few words.
    baseline_name: str
    #: Whether a higher figure is better (rates) or worse (times, memory).
    higher_is_better: bool
    goal: Goal | None = None
    #: Sample count, setup, anything a reader needs to weigh the figure.
    note: str = ""

    @property
    def ratio(self) -> float:
        """tailrunner / baseline: the result (≥ 1 is better for rates, ≤ 1 for costs)."""
        if self.baseline == 0:
            return math.inf if self.tailrunner else 1.0
        return self.tailrunner / self.baseline

    @property
    def met(self) -> bool | None:
        return None if self.goal is None else self.goal.met(self.tailrunner, self.ratio)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["goal"] = None if self.goal is None else str(self.goal)
        data["goal_spec"] = None if self.goal is None else asdict(self.goal)
        data["ratio"] = self.ratio
        data["met"] = self.met
        return data


Measure = Callable[[bool], Awaitable[list[Figure]]]


def run_module(measure: Measure) -> None:
    """The ``__main__`` of a benchmark module: ``--quick``, ``--out PATH``."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    quiet_logs()
    figures = anyio.run(measure, args.quick, backend="asyncio")
    payload = json.dumps([f.to_json() for f in figures], indent=2)
    if args.out is None:
        print(payload)
    else:
        args.out.write_text(payload)


def quiet_logs() -> None:
    """Keep structlog to warnings: a log line per run would be measured too."""
    import logging

    import structlog

    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


# -- numbers ----------------------------------------------------------------


def percentile(samples: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0..100) by linear interpolation between closest ranks."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    k = (len(ordered) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(samples: Sequence[float]) -> float:
    return percentile(samples, 50)


def now() -> float:
    """A monotonic clock that is the same in every process of the machine (CLOCK_MONOTONIC)."""
    return time.monotonic()


# -- memory -------------------------------------------------------------------


def rss_bytes() -> int:
    """Resident set size of this process, after a full garbage collection."""
    gc.collect()
    return int(psutil.Process().memory_info().rss)


# -- subprocesses ---------------------------------------------------------------


def python_command(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def child_env() -> dict[str, str]:
    """The environment of a benchmark's subprocesses: this one, importing from the repo."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


@dataclass(slots=True)
class Child:
    """A subprocess that speaks JSON lines on stdout and reads commands on stdin."""

    process: anyio.abc.Process
    _buffer: bytes = b""

    async def read(self) -> dict[str, Any]:
        """The next JSON line the child printed.

        :raises RuntimeError: the child ended first (its stderr went to ours).
        """
        assert self.process.stdout is not None
        while b"\n" not in self._buffer:
            try:
                chunk = await self.process.stdout.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                await self.process.wait()
                raise RuntimeError(
                    f"benchmark child exited with {self.process.returncode} before reporting"
                ) from None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return dict(json.loads(line))

    async def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send(json.dumps(message).encode() + b"\n")


@asynccontextmanager
async def child(module: str, *args: str) -> AsyncIterator[Child]:
    """Start ``python -m module args``; kill it on the way out if it is still running."""
    process = await anyio.open_process(python_command(module, *args), env=child_env(), stderr=None)
    try:
        yield Child(process)
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                if process.stdin is not None:
                    await process.stdin.aclose()
                with anyio.move_on_after(10):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
            await process.aclose()


class Reporter:
    """The child side of :class:`Child`: JSON lines out, JSON lines in."""

    def __init__(self) -> None:
        self._stdin = anyio.wrap_file(sys.stdin)

    def send(self, **message: Any) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    async def receive(self) -> dict[str, Any]:
        line = await self._stdin.readline()
        if not line:
            raise EOFError("the parent closed stdin")
        return dict(json.loads(line))


@asynccontextmanager
async def temp_dir(prefix: str) -> AsyncIterator[Path]:
    """A temporary folder on disk (not tmpfs: fsync costs what it costs in production)."""
    with tempfile.TemporaryDirectory(prefix=f"tailrunner-bench-{prefix}-") as path:
        yield Path(path)


@asynccontextmanager
async def serving(kind: str, *args: str) -> AsyncIterator[str]:
    """Run ``python -m bench.serve kind args`` for the block; yields its address."""
    async with serving_process(kind, *args) as (address, _):
        yield address


@asynccontextmanager
async def serving_process(kind: str, *args: str) -> AsyncIterator[tuple[str, int]]:
    """Like :func:`serving`, and yields the server's process id too (for profilers)."""
    async with child("bench.serve", kind, *args) as server:
        hello = await server.read()
        yield str(hello["address"]), server.process.pid
