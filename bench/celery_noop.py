"""The raw Celery baseline: a no-op task on a Celery app configured exactly like Longrun's (the
same Django settings, so the same broker, serializer, acks_late, prefetch and priorities). Each
task records that it ran with one Redis INCR, the least a task can do to be counted."""

from __future__ import annotations

import os

import redis
from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

app = Celery("bench-noop")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_routes = {"bench.noop": {"queue": "bench.noop"}}

_counter = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))


@app.task(name="bench.noop", acks_late=True, ignore_result=True)
def noop(key: str) -> None:
    _counter.incr(key)
