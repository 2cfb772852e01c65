"""Job types the chaos soak runs (`bench/soak.py`, `make soak`), loaded by its workers through
LONGRUN_JOB_MODULES=bench.soak_job_types (the built-in types stay registered beside them).

Every one of them, when its code completes (returns, or raises at the end: an error, a
cooperative cancel, a lost lease), appends one line `<job id> <attempt>` to the file named by
LONGRUN_SOAK_COMPLETIONS (O_APPEND, so lines from concurrent processes never interleave). The
soak counts those lines to prove that no attempt of a job ran to its end twice. A process killed
mid-job writes nothing: that attempt did not complete.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from tasks_app.registry import job_type

if TYPE_CHECKING:  # job types run in workers; the worker is not loaded everywhere else
    from tasks_app.worker.context import JobContext

COMPLETIONS_ENV = "LONGRUN_SOAK_COMPLETIONS"

F = TypeVar("F", bound=Callable[..., Any])


class SoakFlakyError(Exception):
    """A transient failure: `soak-flaky` declares it retryable."""


class SoakFailure(Exception):
    """The error `soak-fail` always raises (not retryable)."""


def record_completion(job_id: object, attempt: int) -> None:
    """Append `<job id> <attempt>` to the completions file, if the soak named one."""
    path = os.environ.get(COMPLETIONS_ENV)
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{job_id} {attempt}\n".encode())
    finally:
        os.close(fd)


def completes(func: F) -> F:
    """Record one completion line when the job's code returns or raises an exception. Not for a
    BaseException (a signal tearing the process down mid-job is not the code completing)."""

    @functools.wraps(func)
    def run(ctx: JobContext, **params: Any) -> Any:
        try:
            result = func(ctx, **params)
        except Exception:
            record_completion(ctx.job_id, ctx.attempt)
            raise
        record_completion(ctx.job_id, ctx.attempt)
        return result

    return run  # type: ignore[return-value]


@job_type(
    "soak-short",
    description="Sleeps a moment (0-0.3 s) and succeeds.",
    params_schema={
        "type": "object",
        "properties": {"seconds": {"type": "number", "minimum": 0, "maximum": 5, "default": 0.1}},
        "additionalProperties": False,
    },
)
@completes
def short(ctx: JobContext, *, seconds: float = 0.1) -> dict[str, Any]:
    time.sleep(seconds)
    return {"attempt": ctx.attempt}


@job_type(
    "soak-long",
    description="Runs for `seconds` in half-second steps, reporting progress at every step and "
    "stopping cleanly when cancelled.",
    params_schema={
        "type": "object",
        "properties": {"seconds": {"type": "number", "minimum": 0.5, "maximum": 600, "default": 10}},
        "additionalProperties": False,
    },
)
@completes
def long(ctx: JobContext, *, seconds: float = 10) -> dict[str, Any]:
    steps = max(1, round(seconds / 0.5))
    for step in range(steps):
        ctx.raise_if_cancelled()
        time.sleep(seconds / steps)
        ctx.progress(100 * (step + 1) / steps, f"step {step + 1} of {steps}")
    return {"attempt": ctx.attempt, "steps": steps}


@job_type(
    "soak-chatty",
    description="Calls ctx.progress `calls` times, spread over about `spread` seconds.",
    params_schema={
        "type": "object",
        "properties": {
            "calls": {"type": "integer", "minimum": 1, "maximum": 100_000, "default": 2000},
            "spread": {"type": "number", "minimum": 0, "maximum": 10, "default": 0.5},
        },
        "additionalProperties": False,
    },
)
@completes
def chatty(ctx: JobContext, *, calls: int = 2000, spread: float = 0.5) -> dict[str, Any]:
    chunk = 100
    pause = spread / max(1, calls // chunk)
    for i in range(1, calls + 1):
        ctx.progress(i * 100 // calls, f"call {i} of {calls}")
        if i % chunk == 0:
            ctx.raise_if_cancelled()
            time.sleep(pause)
    return {"attempt": ctx.attempt, "calls": calls}


@job_type(
    "soak-flaky",
    description="Raises a retryable error on its first `failures` attempts, then succeeds.",
    params_schema={
        "type": "object",
        "properties": {"failures": {"type": "integer", "minimum": 0, "maximum": 19, "default": 1}},
        "additionalProperties": False,
    },
    retry_on=(SoakFlakyError,),
)
@completes
def flaky(ctx: JobContext, *, failures: int = 1) -> dict[str, Any]:
    time.sleep(0.05)
    if ctx.attempt <= failures:
        raise SoakFlakyError(f"transient failure on attempt {ctx.attempt}")
    return {"attempt": ctx.attempt}


@job_type(
    "soak-fail",
    description="Always fails with a non-retryable SoakFailure after a short delay.",
    params_schema={
        "type": "object",
        "properties": {"delay": {"type": "number", "minimum": 0, "maximum": 5, "default": 0.1}},
        "additionalProperties": False,
    },
)
@completes
def fail(ctx: JobContext, *, delay: float = 0.1) -> dict[str, Any]:
    time.sleep(delay)
    raise SoakFailure(f"fails on purpose (attempt {ctx.attempt})")
