"""`make bench`: every benchmark against the real stack, one table.

    .venv/bin/python bench/run.py            # the full run (N >= 2,000, 1,000,000 rows...): targets enforced
    .venv/bin/python bench/run.py --quick    # small N, a few minutes (CI): the scripts run, the figures
                                             # are printed, targets are reported but not enforced
    .venv/bin/python bench/run.py throughput history   # some of them

Exits non-zero when a benchmark fails to run, or (full run) when a figure misses its target.
PostgreSQL: BENCH_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres), where the
database `longrun_bench` is created afresh. Redis: REDIS_URL (its db 15), or one started here.
"""

from __future__ import annotations

import os
import platform
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_api  # noqa: E402
import bench_fanout  # noqa: E402
import bench_history  # noqa: E402
import bench_latency  # noqa: E402
import bench_progress  # noqa: E402
import bench_schedules  # noqa: E402
import bench_throughput  # noqa: E402
from harness import Table, environment  # noqa: E402

BENCHMARKS = {
    "throughput": bench_throughput.run,
    "latency": bench_latency.run,
    "fanout": bench_fanout.run,
    "api": bench_api.run,
    "progress": bench_progress.run,
    "schedules": bench_schedules.run,
    "history": bench_history.run,  # last: it loads a million rows
}


def machine() -> str:
    import django

    cpus = os.cpu_count()
    return (
        f"{platform.node()}: {cpus} CPUs, {platform.machine()}, Linux {platform.release()}; Python "
        f"{platform.python_version()}, Django {django.get_version()}"
    )


def main() -> int:
    quick = "--quick" in sys.argv
    chosen = [name for name in sys.argv[1:] if not name.startswith("-")] or list(BENCHMARKS)
    unknown = set(chosen) - set(BENCHMARKS)
    if unknown:
        print(f"unknown benchmark(s): {', '.join(sorted(unknown))}; known: {', '.join(BENCHMARKS)}")
        return 2
    table = Table()
    failed: list[str] = []
    started = time.monotonic()
    with environment(quick=quick) as env:
        for name in chosen:
            print(f"running {name}...", flush=True)
            try:
                table.add(*BENCHMARKS[name](env))
            except Exception:
                traceback.print_exc()
                failed.append(name)
            env.reset()
    print()
    print(f"{'quick' if quick else 'full'} run, {time.monotonic() - started:.0f} s; {machine()}")
    print(table.render())
    missed = [f"{r.bench} / {r.metric}" for r in table.results if not r.ok]
    if failed:
        print(f"\nFAILED to run: {', '.join(failed)}")
    if missed:
        print(f"\nmissed targets: {'; '.join(missed)}" + (" (not enforced in a quick run)" if quick else ""))
    return 1 if failed or (missed and not quick) else 0


if __name__ == "__main__":
    sys.exit(main())
