"""Profiles of the hot paths: ``python -m bench.profile stream|latency|many|append [--out DIR]``.

- ``stream``: one activity reading 200,000 events (as :mod:`bench.stream_throughput`);
- ``latency``: 500 eager and 500 lazy wake-ups (as :mod:`bench.wakeup_latency`);
- ``append``: 2,000 one-event appends, one call at a time (as
  :mod:`bench.append_ceiling`), at ``synchronous=NORMAL`` so that the CPU
  cost shows, not the disk's;
- ``many``: the lazy runner subprocess of :mod:`bench.many_tasks` with 20,000
  tasks (first run, wake and run all, signal intake).

This process (client, engine, activity) runs under pyinstrument; the
journal server's process under ``py-spy record`` when py-spy is installed
and allowed to attach (``many`` profiles the runner subprocess instead).
Reports go to ``DIR`` (default ``bench/results/``) as ``profile-KIND-*.txt``,
py-spy's as folded stacks, with a summary of its hottest frames.
"""

from __future__ import annotations

import argparse
import collections
import gc
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
from pyinstrument import Profiler

from bench.common import quiet_logs, serving, serving_process, temp_dir

HERE = Path(__file__).resolve().parent


@contextmanager
def py_spy(pid: int, out: Path) -> Iterator[None]:
    """``py-spy record`` on ``pid`` for the block (nothing if py-spy is missing)."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        print("py-spy not installed: no server profile", file=sys.stderr)
        yield
        return
    command = [exe, "record", "-p", str(pid), "-o", str(out), "-f", "raw", "-r", "250"]
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=30)
        if out.exists():
            out.with_suffix(".summary.txt").write_text(summarize(out))


def summarize(folded: Path, top: int = 25) -> str:
    """The hottest frames of py-spy's folded stacks: self time, then inclusive."""
    total = 0
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    lines = [f"{total} samples", "", "self:"]
    lines += [f"{n / total:6.1%}  {frame}" for frame, n in own.most_common(top)]
    lines += ["", "inclusive:"]
    lines += [f"{n / total:6.1%}  {frame}" for frame, n in inclusive.most_common(top * 2)]
    return "\n".join(lines) + "\n"


@contextmanager
def collections_counted() -> Iterator[dict[int, list[float]]]:
    """Garbage collections in the block, by generation: ``[count, seconds]``.

    Full collections once took half the stream's time (events made a whole
    batch at a time outlived gen-0 collections); the profile shows them only
    as time spread over whatever was allocating.
    """
    counted: dict[int, list[float]] = {0: [0, 0.0], 1: [0, 0.0], 2: [0, 0.0]}
    started = [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            entry = counted[info["generation"]]
            entry[0] += 1
            entry[1] += time.perf_counter() - started[0]

    gc.callbacks.append(callback)
    try:
        yield counted
    finally:
        gc.callbacks.remove(callback)


def describe_collections(counted: dict[int, list[float]]) -> str:
    return ", ".join(
        f"gen {generation}: {int(n)} ({seconds * 1000:.1f} ms)"
        for generation, (n, seconds) in counted.items()
    )


def write(profiler: Profiler, out: Path) -> None:
    out.write_text(profiler.output_text(unicode=False, color=False))
    print(f"wrote {out}", file=sys.stderr)


async def profile_stream(out: Path) -> None:
    from bench.stream_throughput import AGGREGATE_TYPE, fill, tailrunner_pass
    from tailrunner.journal.client import JournalClient
    from tailrunner.model import AggregateRef

    aggregate = AggregateRef(type=AGGREGATE_TYPE, id=uuid.uuid4())
    async with temp_dir("profile") as tmp:
        url = f"sqlite:///{tmp / 'journal.db'}"
        await fill(url, aggregate, 200_000)
        async with (
            serving_process("journal", "--store", url) as (address, pid),
            JournalClient.connect(address) as client,
        ):
            await tailrunner_pass(client, aggregate)  # warm-up
            profiler = Profiler(interval=0.001, async_mode="disabled")
            with (
                py_spy(pid, out / "profile-stream-server.folded"),
                collections_counted() as counted,
            ):
                profiler.start()
                count, seconds = await tailrunner_pass(client, aggregate)
                profiler.stop()
    print(f"stream: {count / seconds:,.0f} events/s under the profiler", file=sys.stderr)
    print(f"stream: garbage collections {describe_collections(counted)}", file=sys.stderr)
    write(profiler, out / "profile-stream-client.txt")


async def profile_latency(out: Path) -> None:
    from bench.wakeup_latency import samplers

    async with temp_dir("profile") as tmp:
        url = f"sqlite:///{tmp / 'journal.db'}?synchronous=NORMAL"
        async with (
            serving_process("journal", "--store", url) as (address, pid),
            serving("baseline") as baseline_address,
            samplers(address, baseline_address) as by_name,
        ):
            for name in ("eager", "lazy"):
                sampler = by_name[name]
                for _ in range(20):
                    await sampler()
                profiler = Profiler(interval=0.0005, async_mode="disabled")
                with py_spy(pid, out / f"profile-latency-{name}-server.folded"):
                    profiler.start()
                    for _ in range(500):
                        await sampler()
                    profiler.stop()
                write(profiler, out / f"profile-latency-{name}-client.txt")


async def profile_many(out: Path) -> None:
    from bench.many_tasks import LAZY_TYPE, Gate, append_one_each, lazy_round
    from tailrunner.journal.open import open_store
    from tailrunner.journal.server import JournalServer
    from tailrunner.model import AggregateRef

    n = 20_000
    os.environ["BENCH_PROFILE"] = str(out / "profile-many-runner.txt")
    async with temp_dir("profile") as tmp:
        gate = Gate(await open_store(f"sqlite:///{tmp / 'journal.db'}?synchronous=OFF"))
        async with JournalServer(
            gate,  # type: ignore[arg-type]  # a pass-through proxy
            listen="127.0.0.1:0",
            max_pending_signals=n + 1000,
            close_store=True,
        ) as server:
            refs = [AggregateRef(type=LAZY_TYPE, id=uuid.uuid4()) for _ in range(n)]
            await append_one_each(gate, refs)  # type: ignore[arg-type]
            figures = await lazy_round("lazy", server, gate, refs)
    print(f"many: {figures}", file=sys.stderr)


async def profile_append(out: Path) -> None:
    from bench.journal_appends import client_appends, make_batches
    from tailrunner.journal.client import JournalClient

    async with temp_dir("profile") as tmp:
        url = f"sqlite:///{tmp / 'journal.db'}?synchronous=NORMAL"
        async with (
            serving_process("journal", "--store", url) as (address, pid),
            JournalClient.connect(address) as client,
        ):
            await client_appends(client, make_batches(200, 1))  # warm-up
            batches = make_batches(2_000, 1)
            profiler = Profiler(interval=0.0005, async_mode="disabled")
            with py_spy(pid, out / "profile-append-server.folded"):
                profiler.start()
                rate = await client_appends(client, batches)
                profiler.stop()
    print(f"append: {rate:,.0f} events/s under the profiler", file=sys.stderr)
    write(profiler, out / "profile-append-client.txt")


KINDS = {
    "stream": profile_stream,
    "latency": profile_latency,
    "many": profile_many,
    "append": profile_append,
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("kind", choices=sorted(KINDS))
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    quiet_logs()
    anyio.run(KINDS[args.kind], args.out.resolve(), backend="asyncio")


if __name__ == "__main__":
    main()
