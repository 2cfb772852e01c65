"""The primitives of a state change: the conditional UPDATE, the history entry, text that the
database can store."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, TypeAlias

from django.contrib.auth.models import AnonymousUser
from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import F, Q

from ..models import Job, JobEvent, JobId

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    # Who asked for a change: a user (API, admin, pages), or None for the system.
    Actor: TypeAlias = User | AnonymousUser | None


def storable_text(text: str) -> str:
    """PostgreSQL text and jsonb cannot hold NUL; show it escaped instead of failing the write."""
    return text.replace("\x00", "\\x00")


def has_nul(value: Any) -> bool:
    """Whether a JSON value holds a NUL character anywhere (PostgreSQL would refuse it)."""
    return "\\u0000" in json.dumps(value, cls=DjangoJSONEncoder)


def update_if(job_id: JobId, where: Q, **changes: Any) -> Job | None:
    """Apply `changes` to the job if it matches `where`; return the fresh row, or None if the
    condition did not hold (another change won). Must run inside a transaction so the re-read
    sees this write and nobody else's."""
    changes["version"] = F("version") + 1
    if not Job.objects.filter(Q(pk=job_id) & where).update(**changes):
        return None
    return Job.objects.select_related("owner").get(pk=job_id)


def bump_version(job_id: JobId) -> Job:
    """A change with no field of its own (a note in the history): version + 1."""
    job = update_if(job_id, Q())
    assert job is not None
    return job


def record_event(
    job: Job,
    kind: str,
    message: str = "",
    *,
    actor: Actor = None,
    data: dict[str, Any] | None = None,
) -> JobEvent:
    """The history entry of the change that produced `job.version`."""
    return JobEvent.objects.create(
        job=job,
        seq=job.version,
        kind=kind,
        status=job.status,
        message=message,
        data=data or {},
        actor=actor if actor is not None and not isinstance(actor, AnonymousUser) else None,
    )


def actor_suffix(actor: Actor) -> str:
    """ " by alice" for a history message, or nothing for the system."""
    return f" by {actor.get_username()}" if actor is not None and not isinstance(actor, AnonymousUser) else ""
