"""Longrun's URLs plus bare Django views, the API benchmark's baseline on the same server: one
row inserted or read with the ORM, answered with JsonResponse (no DRF, no validation, no events,
no dispatch)."""

from __future__ import annotations

import json
import uuid

from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from project.urls import urlpatterns as longrun_urlpatterns
from tasks_app.models import Job


@csrf_exempt
def bare_insert(request: HttpRequest) -> JsonResponse:
    body = json.loads(request.body)
    job = Job.objects.create(
        type=body["type"], params=body.get("params", {}), owner_id=int(request.GET["owner"])
    )
    return JsonResponse({"id": str(job.pk), "status": job.status}, status=202)


def bare_read(request: HttpRequest, pk: uuid.UUID) -> JsonResponse:
    job = Job.objects.get(pk=pk)
    return JsonResponse({"id": str(job.pk), "status": job.status, "version": job.version})


urlpatterns = [
    path("bench/bare/", bare_insert),
    path("bench/bare/<uuid:pk>/", bare_read),
    *longrun_urlpatterns,
]
