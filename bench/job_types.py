"""Job types only the benchmarks use (imported by the benchmark's workers, LONGRUN_JOB_MODULES)."""

from __future__ import annotations

import time
from typing import Any

from tasks_app.registry import job_type


@job_type(
    "bench-chatty",
    description="Reports progress `calls` times as fast as it can, then holds its last report.",
    params_schema={
        "type": "object",
        "properties": {
            "calls": {"type": "integer", "minimum": 1, "default": 100_000},
            "hold": {"type": "number", "minimum": 0, "default": 2},
        },
        "additionalProperties": False,
    },
)
def chatty(ctx: Any, *, calls: int = 100_000, hold: float = 2) -> dict[str, Any]:
    for i in range(1, calls + 1):
        ctx.progress(i * 99 // calls, f"item {i}")
    time.sleep(hold)  # the last report must land while the job is still running
    return {"calls": calls}
