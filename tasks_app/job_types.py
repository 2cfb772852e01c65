"""The built-in job types. Each is one decorated function; see `tasks_app.registry`."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from .registry import job_type

if TYPE_CHECKING:  # job types run in workers; importing the worker here would load it everywhere
    from .worker.context import JobContext


@job_type(
    "sleep",
    description="Waits the given number of seconds in steps, reporting progress (the I/O-bound case).",
    params_schema={
        "type": "object",
        "properties": {
            "seconds": {"type": "number", "minimum": 0, "maximum": 86400, "default": 5},
            "steps": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 10},
        },
        "additionalProperties": False,
    },
)
def sleep(ctx: JobContext, *, seconds: float = 5, steps: int = 10) -> dict:
    for step in range(steps):
        ctx.raise_if_cancelled()
        time.sleep(seconds / steps)
        ctx.progress(100 * (step + 1) / steps, f"step {step + 1} of {steps}")
    return {"slept": seconds}


@job_type(
    "primes",
    description="Counts the primes below n with a segmented sieve, in chunks, reporting progress and "
    "stopping between chunks when cancelled (the CPU-bound case).",
    params_schema={
        "type": "object",
        "properties": {
            "n": {"type": "integer", "minimum": 2, "maximum": 10_000_000_000, "default": 1_000_000},
            "chunk": {"type": "integer", "minimum": 1000, "maximum": 10_000_000, "default": 100_000},
        },
        "additionalProperties": False,
    },
)
def primes(ctx: JobContext, *, n: int = 1_000_000, chunk: int = 100_000) -> dict:
    root = math.isqrt(n) + 1
    base = bytearray([1]) * (root + 1)
    base[0:2] = b"\x00\x00"
    for i in range(2, math.isqrt(root) + 1):
        if base[i]:
            base[i * i :: i] = bytearray(len(range(i * i, root + 1, i)))
    small_primes = [i for i in range(2, root + 1) if base[i]]

    count = 0
    for low in range(2, n, chunk):
        ctx.raise_if_cancelled()
        high = min(low + chunk, n)  # this segment covers [low, high)
        segment = bytearray([1]) * (high - low)
        for p in small_primes:
            if p * p >= high:
                break
            start = max(p * p, (low + p - 1) // p * p)
            segment[start - low :: p] = bytearray(len(range(start - low, high - low, p)))
        count += sum(segment)
        ctx.progress(100 * (high - 2) / max(1, n - 2), f"checked below {high:,}")
    return {"n": n, "count": count}


class DemoError(Exception):
    """The error the `fail` type raises unless told otherwise."""


_FAIL_ERRORS = {
    "DemoError": DemoError,
    "ValueError": ValueError,
    "RuntimeError": RuntimeError,
    "ZeroDivisionError": ZeroDivisionError,
}


@job_type(
    "fail",
    description="Raises the given error after an optional delay (for demos and tests).",
    params_schema={
        "type": "object",
        "properties": {
            "message": {"type": "string", "maxLength": 1000, "default": "This job failed on purpose."},
            "error": {"type": "string", "enum": sorted(_FAIL_ERRORS), "default": "DemoError"},
            "delay": {"type": "number", "minimum": 0, "maximum": 3600, "default": 0},
        },
        "additionalProperties": False,
    },
)
def fail(
    ctx: JobContext,
    *,
    message: str = "This job failed on purpose.",
    error: str = "DemoError",
    delay: float = 0,
) -> dict:
    if delay:
        ctx.log(f"Failing in {delay} seconds.")
        time.sleep(delay)
    raise _FAIL_ERRORS[error](message)
