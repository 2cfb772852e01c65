"""A job type on a queue of its own (`queue=`), for the routing tests: registered in the test
process by the `routed_job_types` fixture, in workers through LONGRUN_JOB_MODULES."""

from __future__ import annotations

import os
import socket

from tasks_app.registry import job_type

ROUTED_QUEUE = "test.routed"


@job_type(
    "routed_echo",
    description="Returns its params and where it ran (the routing tests).",
    params_schema={
        "type": "object",
        "properties": {"tag": {"type": "string"}},
        "additionalProperties": False,
    },
    queue=ROUTED_QUEUE,
)
def routed_echo(ctx, *, tag: str = "") -> dict:
    return {"tag": tag, "host": socket.gethostname(), "pid": os.getpid()}
