"""Job types for the fault-injection tests, loaded by the test session and its workers through
LONGRUN_JOB_MODULES (tests/bootstrap.py)."""

from __future__ import annotations

import logging
import os
import signal
import time

from tasks_app.registry import job_type


class FlakyError(Exception):
    """A transient failure: the `flaky` type declares it retryable."""


@job_type(
    "crash",
    description="Kills its own worker process (SIGKILL) on the given attempts, else sleeps and succeeds.",
    params_schema={
        "type": "object",
        "properties": {
            "crash_on_attempts": {"type": "array", "items": {"type": "integer"}, "default": []},
            "seconds": {"type": "number", "minimum": 0, "default": 0.5},
        },
        "additionalProperties": False,
    },
)
def crash(ctx, *, crash_on_attempts=(), seconds=0.5):
    if ctx.attempt in crash_on_attempts:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(seconds)
    return {"attempt": ctx.attempt}


@job_type(
    "stuck",
    description="Sleeps without ever checking for cancellation (as if stuck in a C call).",
    params_schema={
        "type": "object",
        "properties": {"seconds": {"type": "number", "minimum": 0, "default": 60}},
        "additionalProperties": False,
    },
)
def stuck(ctx, *, seconds=60):
    time.sleep(seconds)
    return {"woke": True}


@job_type(
    "flaky",
    description="Fails with a retryable error until the given attempt, then succeeds.",
    params_schema={
        "type": "object",
        "properties": {"succeed_on": {"type": "integer", "minimum": 1, "default": 3}},
        "additionalProperties": False,
    },
    retry_on=(FlakyError,),
)
def flaky(ctx, *, succeed_on=3):
    if ctx.attempt < succeed_on:
        raise FlakyError(f"transient failure on attempt {ctx.attempt}")
    return {"attempt": ctx.attempt}


@job_type(
    "chatty",
    description="Writes a line through Python's logging (which names the job) and succeeds.",
    params_schema={
        "type": "object",
        "properties": {"line": {"type": "string"}},
        "additionalProperties": False,
    },
)
def chatty(ctx, *, line="hello from a job"):
    logging.getLogger("tests.chatty").warning(line)
    return {"logged": line}
