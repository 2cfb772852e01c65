"""Liveness and readiness probes, for load balancers and orchestrators (no login: they carry no
job data)."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from .. import health


@never_cache
@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    """200 while this process serves requests; it checks nothing else (a dead database must not
    get every web process restarted)."""
    return JsonResponse({"status": "ok"})


@never_cache
@require_safe
def readyz(request: HttpRequest) -> JsonResponse:
    """200 when the database, the broker, the channel layer and a live worker for every queue
    answer; 503 with the failing checks otherwise."""
    report = health.readiness()
    return JsonResponse(report, status=200 if report["status"] == "ok" else 503)
