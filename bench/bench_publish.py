"""Cost per live-update event published from sync code (a Celery task, a sync view).

Compares, in one run against the same Redis:
  baseline: async_to_sync(channel_layer.group_send), a new event loop per call
  longrun:  tasks_app.realtime.publish.GroupPublisher, one long-lived connection per process
and prints the per-event cost of each and the ratio. Uses REDIS_URL, or starts a Redis of its own.

    .venv/bin/python bench/bench_publish.py [--events 500]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=500)
    args = parser.parse_args()

    from tasks_app.stack import Stack, free_port

    stack = None
    if not os.environ.get("REDIS_URL"):
        port = free_port()
        data = Path(tempfile.mkdtemp())
        stack = Stack(env=dict(os.environ), cwd=data, log_dir=data)
        stack.start_redis(port, data, persistent=False)
        os.environ["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    os.environ.setdefault("CHANNEL_PREFIX", "longrun-bench")
    import django

    django.setup()
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    from tasks_app.realtime.publish import GroupPublisher

    message = {"type": "job.event", "event": "progress", "version": 1, "job": {"id": "bench", "progress": 50}}
    layer = get_channel_layer()
    publisher = GroupPublisher()

    def time_each(send) -> list[float]:
        send()  # warm up
        samples = []
        for _ in range(args.events):
            start = time.perf_counter()
            send()
            samples.append(time.perf_counter() - start)
        return samples

    try:
        baseline = time_each(lambda: async_to_sync(layer.group_send)("bench", message))
        ours = time_each(lambda: publisher.send(["bench"], message))
    finally:
        if stack:
            stack.stop_all(timeout=5)

    def ms(samples: list[float]) -> str:
        return (
            f"mean {statistics.fmean(samples) * 1000:.3f} ms, p50 {statistics.median(samples) * 1000:.3f} ms"
        )

    print(f"events per variant: {args.events}")
    print(f"baseline async_to_sync(group_send): {ms(baseline)}")
    print(f"longrun GroupPublisher.send:        {ms(ours)}")
    print(f"ratio (baseline / longrun, mean):   {statistics.fmean(baseline) / statistics.fmean(ours):.1f}x")


if __name__ == "__main__":
    main()
