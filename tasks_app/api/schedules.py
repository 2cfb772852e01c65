"""`/api/schedules/`: recurring jobs. Owners see and change their own; staff who may view every
job see all, and those who may change every job change all. Thin: the services decide."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response

from .. import polling, recurrence, schedule_selectors, selectors
from ..conf import SCHEDULE_NEXT_TIMES, SCHEDULES_SNAPSHOT_LIMIT
from ..exceptions import JobValidationError
from ..models import Schedule, ScheduleCatchup, ScheduleOverlap
from ..realtime import sse
from ..serializers import JobSerializer, ScheduleSerializer, schedules_representation
from ..services import schedules
from .errors import problems
from .mixins import ThrottleBeforePermissionsMixin, request_user
from .pagination import JobCursorPagination, SchedulePagination
from .serializers import (
    EventStreamFrameSerializer,
    SchedulePreviewQuery,
    SchedulePreviewSerializer,
    ScheduleWriteSerializer,
)


class ScheduleViewSet(
    ThrottleBeforePermissionsMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    serializer_class = ScheduleSerializer
    pagination_class = SchedulePagination
    lookup_value_regex = polling.UUID_PATTERN
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def get_queryset(self) -> QuerySet[Schedule]:
        return schedule_selectors.schedule_list_visible(self.request.user)

    def get_object(self) -> Schedule:
        return get_object_or_404(self.get_queryset(), pk=self.kwargs["pk"])

    def get_changeable_object(self) -> Schedule:
        """404 if the user may not see it, 403 if they may see but not change it."""
        schedule = self.get_object()
        if not schedule_selectors.may_change_schedule(self.request.user, schedule):
            raise PermissionDenied(
                "You may view this schedule but not change it (the change_job permission)."
            )
        return schedule

    def _answer(self, schedule: Schedule, code: int = status.HTTP_200_OK) -> Response:
        fresh = self.get_queryset().get(pk=schedule.pk)
        return Response(schedules_representation([fresh])[0], status=code)

    @extend_schema(responses={200: ScheduleSerializer(many=True), **problems(400, 401, 429)})
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """My schedules (all, for staff), by name, each with its next five fire times."""
        page = self.paginate_queryset(self.get_queryset())
        assert page is not None
        return self.get_paginated_response(schedules_representation(list(page)))

    @extend_schema(responses={200: ScheduleSerializer, **problems(401, 404, 429)})
    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """One schedule."""
        return self._answer(self.get_object())

    @extend_schema(
        request=ScheduleWriteSerializer, responses={201: ScheduleSerializer, **problems(400, 401, 415, 429)}
    )
    def create(self, request: Request) -> Response:
        """Create a schedule. Its params are checked against the type's schema now; bad cron, an
        unknown time zone or bad params are 400, naming the field."""
        body = ScheduleWriteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        schedule = schedules.schedule_create(owner=request_user(request), **body.validated_data)
        return self._answer(schedule, status.HTTP_201_CREATED)

    @extend_schema(
        request=ScheduleWriteSerializer(partial=True),
        responses={200: ScheduleSerializer, **problems(400, 401, 403, 404, 429)},
    )
    def partial_update(self, request: Request, pk: str) -> Response:
        """Change some of a schedule's fields; its next slot is worked out again. A schedule
        declared in code is changed in code only (400 naming the fields)."""
        schedule = self.get_changeable_object()
        body = ScheduleWriteSerializer(data=request.data, partial=True)
        body.is_valid(raise_exception=True)
        # Only what was sent: partial validation still fills in the defaults of absent fields.
        changes = {name: value for name, value in body.validated_data.items() if name in request.data}
        schedule = schedules.schedule_update(schedule_id=schedule.pk, actor=request_user(request), **changes)
        return self._answer(schedule)

    @extend_schema(responses={204: None, **problems(401, 403, 404, 409, 429)})
    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Delete a schedule. The jobs it created stay. A schedule declared in code is 409."""
        schedule = self.get_changeable_object()
        schedules.schedule_delete(schedule_id=schedule.pk)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=None, responses={200: ScheduleSerializer, **problems(401, 403, 404, 429)})
    @action(detail=True, methods=["post"])
    def pause(self, request: Request, pk: str) -> Response:
        """Stop firing until resumed (a schedule declared in code too; the pause survives deploys)."""
        return self._answer(schedules.schedule_pause(schedule_id=self.get_changeable_object().pk))

    @extend_schema(request=None, responses={200: ScheduleSerializer, **problems(401, 403, 404, 429)})
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: str) -> Response:
        """Fire again from the next slot after now (missed slots are not fired)."""
        return self._answer(schedules.schedule_resume(schedule_id=self.get_changeable_object().pk))

    @extend_schema(request=None, responses={202: JobSerializer, **problems(401, 403, 404, 409, 429)})
    @action(detail=True, methods=["post"])
    def run(self, request: Request, pk: str) -> Response:
        """Submit the schedule's job now, outside its slots (`scheduled_for` null)."""
        job = schedules.schedule_run_now(
            schedule_id=self.get_changeable_object().pk, actor=request_user(request)
        )
        return Response(JobSerializer(job).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        operation_id="schedules_stream",
        responses={
            (200, "text/event-stream"): OpenApiResponse(
                EventStreamFrameSerializer,
                description=f"Server-Sent Events for the schedules I see: first `event: snapshot` with up to "
                f"{SCHEDULES_SNAPSHOT_LIMIT} of them (`{{type, scope, schedules}}`), then `event: schedule` "
                "frames `{type, event, schedule}` for every change and firing (`created`, `updated`, `paused`, "
                "`resumed`, `fired`, `deleted`). Through Daphne the stream stays open; elsewhere it answers the "
                "opening frames only.",
            ),
            **problems(401, 429),
        },
    )
    @action(
        detail=False,
        methods=["get"],
        url_path="stream",
        renderer_classes=[sse.EventStreamRenderer],
        pagination_class=None,
    )
    def stream(self, request: Request) -> Response:
        """Server-Sent Events for my schedules (the opening frames; see `realtime.http`)."""
        visible = list(self.get_queryset()[:SCHEDULES_SNAPSHOT_LIMIT])
        return Response(
            sse.schedules_stream_opening(schedules_representation(visible)), headers=sse.SSE_HEADERS
        )

    @extend_schema(
        parameters=[SchedulePreviewQuery],
        responses={200: SchedulePreviewSerializer, **problems(400, 401, 429)},
    )
    @action(detail=False, methods=["get"], pagination_class=None)
    def preview(self, request: Request) -> Response:
        """When a schedule with this timing would fire: the expression in words and its next five
        slots (the dashboard's form shows them before saving). Bad input is 400 naming the field."""
        values = SchedulePreviewQuery.parse(request.query_params)
        values.update(overlap=ScheduleOverlap.SKIP, catchup=ScheduleCatchup.LATEST)
        errors = recurrence.recurrence_errors(values)
        if errors:
            raise JobValidationError(errors)
        shown = recurrence.preview(values, now=timezone.now(), count=SCHEDULE_NEXT_TIMES)
        return Response(SchedulePreviewSerializer(shown).data)

    @extend_schema(responses={200: JobSerializer(many=True), **problems(400, 401, 404, 429)})
    @action(detail=True, methods=["get"], pagination_class=JobCursorPagination)
    def jobs(self, request: Request, pk: str) -> Response:
        """The jobs the schedule created, newest first (cursor-paginated like /api/jobs/)."""
        schedule = self.get_object()
        jobs = (
            selectors.job_list_visible(request.user).filter(schedule=schedule).order_by("-created_at", "-id")
        )
        page = self.paginate_queryset(jobs)
        assert page is not None
        return self.get_paginated_response(JobSerializer(page, many=True).data)
