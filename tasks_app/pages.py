"""Server-rendered pages for people (the dashboard); the API lives in views.py."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from . import selectors


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    jobs = selectors.job_list_visible(request.user).order_by("-created_at")[:50]
    return render(request, "tasks_app/dashboard.html", {"jobs": jobs})
