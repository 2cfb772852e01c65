"""Prometheus metrics, served at `GET /metrics` (`web/metrics.py`) in the text format of the
official client (`prometheus_client`).

They are right with prefork workers, several web processes and several machines because no
process keeps them for itself:
- **Events** (jobs submitted and finished, queue wait and run time, webhook delivery attempts)
  are Redis hash increments, written after commit by whichever process made the change, in the
  same write as the change's live update (to the first channel-layer host; replies are read at
  the next write, so no round trip is waited for). They are read at scrape time. Redis restarted without persistence starts them
  again from zero, which Prometheus's `rate()` and `increase()` read as a counter reset.
- **Current state** (jobs by status, workers by state, each queue's depth, oldest wait and
  consumers) is read from the database at scrape time: the rows are the truth.
- **Open WebSocket and SSE connections**: each ASGI process keeps its own count in a Redis key
  that expires unless refreshed (`ConnectionCounter`), so a killed process stops counting
  within CONNECTIONS_REFRESH_SECONDS * 3.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import os
import socket
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from datetime import timezone as dt_timezone
from typing import Any

import redis
import redis.asyncio
from django.conf import settings
from django.utils import timezone
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from . import selectors
from .conf import CONNECTIONS_REFRESH_SECONDS, QUEUE_WAIT_BUCKETS, RUN_TIME_BUCKETS
from .models import TERMINAL_STATUSES, Job, JobStatus, WorkerNode, WorkerState
from .realtime import publish

logger = logging.getLogger(__name__)

Command = publish.Command
# Separates the labels inside a hash field ("sleep\x1fsucceeded").
SEP = "\x1f"
CONNECTION_KINDS = ("websocket", "sse")


def _key(name: str) -> str:
    layers: dict[str, Any] = settings.CHANNEL_LAYERS
    prefix = layers["default"].get("CONFIG", {}).get("prefix", "asgi")
    return f"{prefix}:metrics:{name}"


def _observe(name: str, label: str, buckets: Sequence[float], seconds: float) -> list[Command]:
    """A histogram observation: its bucket (counts are kept per bucket, made cumulative when
    read), its sum and its count."""
    key = _key(name)
    index = bisect.bisect_left(buckets, seconds)  # len(buckets): +Inf
    return [
        ("HINCRBY", key, f"{label}{SEP}{index}", 1),
        ("HINCRBYFLOAT", key, f"{label}{SEP}sum", repr(max(seconds, 0.0))),
    ]


# --- recording (the notifier and the webhook service call these after commit) ----------------


def job_change_commands(job: Job, event: str) -> list[Command]:
    """What a job's change adds to the counters: a submission, a start (its queue wait) or an
    end (its final status and run time)."""
    if event == "created":
        return [("HINCRBY", _key("submitted"), job.type, 1)]
    if event != "status":
        return []
    if job.status == JobStatus.RUNNING and job.started_at is not None:
        ready_at = max(job.created_at, job.run_at) if job.run_at else job.created_at
        return _observe(
            "queue_wait", job.type, QUEUE_WAIT_BUCKETS, (job.started_at - ready_at).total_seconds()
        )
    if job.status in TERMINAL_STATUSES:
        commands: list[Command] = [("HINCRBY", _key("finished"), f"{job.type}{SEP}{job.status}", 1)]
        if job.started_at is not None and job.finished_at is not None:
            run = (job.finished_at - job.started_at).total_seconds()
            commands += _observe("run_time", job.type, RUN_TIME_BUCKETS, run)
        return commands
    return []


def jobs_created_commands(jobs: Iterable[Job]) -> list[Command]:
    by_type: dict[str, int] = {}
    for job in jobs:
        by_type[job.type] = by_type.get(job.type, 0) + 1
    return [("HINCRBY", _key("submitted"), type_name, n) for type_name, n in sorted(by_type.items())]


def webhook_attempt_commands(result: str) -> list[Command]:
    """One delivery attempt's result: delivered, retrying, failed (gave up) or gone (410)."""
    return [("HINCRBY", _key("webhook_attempts"), result, 1)]


def record(commands: list[Command]) -> None:
    """Add to the counters, best effort: a metric is never worth failing or slowing a job."""
    if commands:
        publish.publisher.send_commands(commands)


# --- the backlog over the last hour (the dashboard's queue depth chart) -------------------------

# A sample is kept a little longer than the hour the chart shows; expiry does the trimming.
DEPTH_KEEP_SECONDS = 65 * 60
DEPTH_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)


def queue_depth_record(counts: dict[str, int], *, at: datetime) -> None:
    """Keep the jobs queued and running at `at` as the sample of its minute (the sweep takes one
    each round; the minute's last one stays). Best effort, like the counters."""
    minute = int(at.timestamp()) // 60
    sample = json.dumps({status: counts.get(status, 0) for status in DEPTH_STATUSES})
    publish.publisher.send_commands([("SET", _key(f"depth:{minute}"), sample, "EX", DEPTH_KEEP_SECONDS)])


def queue_depth_history(*, now: datetime, minutes: int = 60) -> list[dict[str, Any]]:
    """The samples of the last `minutes` minutes, oldest first: {minute, queued, running}, with
    None for a minute nobody sampled (no sweep ran, or the store was down)."""
    first = int(now.timestamp()) // 60 - minutes + 1
    numbers = range(first, first + minutes)
    try:
        client = publish.publisher.shards()[0].client
        replies: list[Any] = client.mget([_key(f"depth:{minute}") for minute in numbers])  # type: ignore[assignment]
    except (redis.RedisError, OSError) as exc:
        logger.warning("metrics: the queue depth samples could not be read: %s", exc)
        replies = [None] * minutes
    history = []
    for minute, reply in zip(numbers, replies, strict=True):
        sample = json.loads(reply) if reply else {}
        history.append(
            {"minute": datetime.fromtimestamp(minute * 60, tz=dt_timezone.utc)}
            | {str(status): sample.get(status) for status in DEPTH_STATUSES}
        )
    return history


def dashboard_stats(user: Any) -> dict[str, Any]:
    """`selectors.job_stats` for `user`, why a queued job of each type waits, and for staff who
    see every job the queue depth over the same hour (`GET /api/stats/` and the dashboard)."""
    stats = selectors.job_stats(user)
    stats["queue_depth_per_minute"] = (
        queue_depth_history(now=timezone.now()) if selectors.sees_every_job(user) else []
    )
    stats["waits"] = selectors.job_type_waits()
    return stats


# --- open connections (ASGI processes) --------------------------------------------------------


class ConnectionCounter:
    """This process's open WebSocket and SSE connections, mirrored into a Redis key of its own
    (`...:metrics:connections:<host>:<pid>`) that expires unless refreshed: written when the
    count changes and every CONNECTIONS_REFRESH_SECONDS while any is open, deleted at zero."""

    def __init__(self) -> None:
        self.counts = dict.fromkeys(CONNECTION_KINDS, 0)
        self._changed: asyncio.Event | None = None
        self._reporter: asyncio.Task[None] | None = None

    def opened(self, kind: str) -> None:
        self.counts[kind] += 1
        self._report_soon()

    def closed(self, kind: str) -> None:
        self.counts[kind] = max(self.counts[kind] - 1, 0)
        self._report_soon()

    @contextlib.contextmanager
    def open(self, kind: str) -> Iterator[None]:
        self.opened(kind)
        try:
            yield
        finally:
            self.closed(kind)

    def _report_soon(self) -> None:
        if self._reporter is None or self._reporter.done():
            self._changed = asyncio.Event()
            self._reporter = asyncio.get_running_loop().create_task(self._report())
        assert self._changed is not None
        self._changed.set()

    async def _report(self) -> None:
        assert self._changed is not None
        key = _key(f"connections:{socket.gethostname()}:{os.getpid()}")
        client = _async_client()
        try:
            while True:
                self._changed.clear()
                counts = dict(self.counts)
                try:
                    if any(counts.values()):
                        async with client.pipeline(transaction=True) as pipe:
                            pipe.hset(key, mapping=counts)
                            pipe.expire(key, int(CONNECTIONS_REFRESH_SECONDS * 3))
                            await pipe.execute()
                    else:
                        await client.delete(key)
                except (redis.RedisError, OSError) as exc:
                    logger.debug("connection count not reported: %s", exc)
                if not any(self.counts.values()) and not any(counts.values()):
                    return  # nothing open, and that was written: no await between here and the end
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), CONNECTIONS_REFRESH_SECONDS)
        finally:
            await client.aclose()


def _async_client() -> redis.asyncio.Redis:
    """A client of the first channel-layer host, where the counters live."""
    address, options = publish.client_options(publish.layer_hosts()[0])
    return redis.asyncio.Redis.from_url(address, **options) if address else redis.asyncio.Redis(**options)


connections = ConnectionCounter()


# --- reading (scrape time) --------------------------------------------------------------------


def _histogram(
    name: str, doc: str, buckets: Sequence[float], fields: dict[str, str]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=["type"])
    per_type: dict[str, dict[str, float]] = {}
    for field, value in fields.items():
        label, _, part = field.rpartition(SEP)
        per_type.setdefault(label, {})[part] = float(value)
    for label, parts in sorted(per_type.items()):
        cumulative, rows = 0.0, []
        for index, bound in enumerate([*buckets, float("inf")]):
            cumulative += parts.get(str(index), 0.0)
            rows.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        family.add_metric([label], rows, sum_value=parts.get("sum", 0.0))
    return family


class LongrunCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        yield from self._events()
        yield from self._state()

    def _events(self) -> Iterator[Metric]:
        names = ("submitted", "finished", "queue_wait", "run_time", "webhook_attempts")
        up = GaugeMetricFamily(
            "longrun_metrics_store_up", "1 when the Redis holding the event counters answered."
        )
        try:
            client = publish.publisher.shards()[0].client
            with client.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.hgetall(_key(name))
                keys = list(client.scan_iter(match=_key("connections:*"), count=500))
                for key in keys:
                    pipe.hgetall(key)
                replies = pipe.execute()
        except (redis.RedisError, OSError) as exc:
            logger.warning("metrics: the event counters could not be read: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        decoded = [{k.decode(): v.decode() for k, v in reply.items()} for reply in replies]
        submitted, finished, queue_wait, run_time, webhook_attempts = decoded[: len(names)]

        family = CounterMetricFamily("longrun_jobs_submitted", "Jobs submitted, by type.", labels=["type"])
        for type_name, n in sorted(submitted.items()):
            family.add_metric([type_name], float(n))
        yield family
        family = CounterMetricFamily(
            "longrun_jobs_finished", "Jobs ended, by type and final status.", labels=["type", "status"]
        )
        for field, n in sorted(finished.items()):
            type_name, _, status = field.rpartition(SEP)
            family.add_metric([type_name, status], float(n))
        yield family
        yield _histogram(
            "longrun_job_queue_wait_seconds",
            "From submission (or run_at) to a worker starting the job, by type.",
            QUEUE_WAIT_BUCKETS,
            queue_wait,
        )
        yield _histogram(
            "longrun_job_run_seconds", "From a job's start to its end, by type.", RUN_TIME_BUCKETS, run_time
        )
        family = CounterMetricFamily(
            "longrun_webhook_attempts",
            "Webhook delivery attempts, by result: delivered, retrying, failed (gave up), gone (410).",
            labels=["result"],
        )
        for result, n in sorted(webhook_attempts.items()):
            family.add_metric([result], float(n))
        yield family
        open_now = dict.fromkeys(CONNECTION_KINDS, 0)
        for counts in decoded[len(names) :]:
            for kind in CONNECTION_KINDS:
                open_now[kind] += int(counts.get(kind, 0))
        connections = GaugeMetricFamily(
            "longrun_connections", "Open live connections over all ASGI processes, by kind.", labels=["kind"]
        )
        for kind, n in open_now.items():
            connections.add_metric([kind], n)
        yield connections

    def _state(self) -> Iterator[Metric]:
        by_status = dict.fromkeys(JobStatus.values, 0)
        for (_type_name, status), n in selectors.job_totals().items():
            by_status[status] = by_status.get(status, 0) + n
        stored = GaugeMetricFamily("longrun_jobs", "Jobs stored, by status.", labels=["status"])
        for status, n in by_status.items():
            stored.add_metric([status], n)
        yield stored

        by_state = dict.fromkeys(WorkerState.values, 0)
        for node in WorkerNode.objects.all():
            by_state[selectors.worker_state(node)] += 1
        nodes = GaugeMetricFamily("longrun_workers", "Worker nodes, by state.", labels=["state"])
        for state, n in by_state.items():
            nodes.add_metric([state], n)
        yield nodes

        overview = selectors.queues_overview()
        jobs = GaugeMetricFamily(
            "longrun_queue_jobs", "Jobs of a queue, by status.", labels=["queue", "status"]
        )
        consumers = GaugeMetricFamily(
            "longrun_queue_consumers", "Live workers reading a queue.", labels=["queue"]
        )
        oldest = GaugeMetricFamily(
            "longrun_queue_oldest_wait_seconds",
            "How long a queue's oldest queued job has waited.",
            labels=["queue"],
        )
        for queue in overview:
            for status in ("queued", "scheduled", "running"):
                jobs.add_metric([queue["queue"], status], queue[status])
            consumers.add_metric([queue["queue"]], queue["consumers"])
            oldest.add_metric([queue["queue"]], queue["oldest_queued_seconds"] or 0.0)
        yield from (jobs, consumers, oldest)


def exposition() -> bytes:
    """Every metric, in Prometheus's text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LongrunCollector())
    return generate_latest(registry)
