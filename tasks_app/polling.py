"""What a client that polls a job needs, shared by the REST API and the long-poll front
(`realtime.http`): the ETag and Retry-After of a job, weak If-None-Match comparison, and the one
rule for `?wait=`."""

from __future__ import annotations

from collections.abc import Mapping

from django.utils import timezone
from django.utils.http import parse_etags
from rest_framework import serializers

from .conf import MAX_WAIT_SECONDS
from .models import Job, JobStatus
from .serializers import QueryParams

# A job id in a URL: with or without dashes, as uuid.UUID accepts it.
UUID_PATTERN = r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"


def job_etag(job: Job) -> str:
    return f'"{job.version}"'


def etag_matches(etag: str, if_none_match: str) -> bool:
    """If-None-Match uses weak comparison (RFC 9110 13.1.2): W/"3" matches "3"."""
    if if_none_match.strip() == "*":
        return True
    return any(tag.removeprefix("W/") == etag for tag in parse_etags(if_none_match))


def retry_after(job: Job) -> int | None:
    """How long a poller should wait before asking again; None once the job has ended."""
    if job.is_terminal:
        return None
    if job.status == JobStatus.SCHEDULED and job.run_at is not None:
        return int(min(max((job.run_at - timezone.now()).total_seconds(), 1), 60))
    return 2


def job_headers(job: Job) -> dict[str, str]:
    """ETag, and Retry-After while the job has not ended."""
    headers = {"ETag": job_etag(job)}
    seconds = retry_after(job)
    if seconds is not None:
        headers["Retry-After"] = str(seconds)
    return headers


class JobRetrieveParams(QueryParams):
    """The query string of `GET /api/jobs/{id}/`."""

    wait = serializers.IntegerField(
        min_value=0,
        max_value=MAX_WAIT_SECONDS,
        required=False,
        help_text=f"Long-poll: answer as soon as the job's version changes, or after this many seconds "
        f"(at most {MAX_WAIT_SECONDS}; 0 answers at once).",
    )


def wait_seconds(query: Mapping[str, str]) -> int | None:
    """The `wait` of a query string: None when absent; ValidationError (naming `wait`) when invalid."""
    wait: int | None = JobRetrieveParams.parse(query).get("wait")
    return wait
