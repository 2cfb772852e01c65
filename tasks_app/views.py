"""The REST API: thin callers of selectors (reads) and services (writes)."""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.utils import timezone
from django.utils.http import parse_etags
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import AuthenticationFailed, NotFound, PermissionDenied
from rest_framework.filters import OrderingFilter
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import AnonRateThrottle, UserRateThrottle
from rest_framework.views import APIView

from . import registry, selectors, services, sse
from .api_errors import Conflict
from .exceptions import IdempotencyConflict
from .filters import JobFilter
from .models import ACTIVE_STATUSES, Job, JobStatus
from .serializers import (
    JobBulkCancelResultSerializer,
    JobBulkCancelSerializer,
    JobBulkCreatedSerializer,
    JobBulkCreateSerializer,
    JobCreateSerializer,
    JobEventSerializer,
    JobSerializer,
    JobTypeSerializer,
    ProblemSerializer,
    SigningSecretsSerializer,
    StatsSerializer,
    WebhookDeliverySerializer,
)
from .sse import EventStreamRenderer, last_event_id

UUID_PATTERN = r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
IDEMPOTENCY_KEY_PATTERN = re.compile(r"^[\x21-\x7e]{1,255}$")  # printable ASCII, no spaces
MAX_WAIT_SECONDS = 30


def problems(*codes: int) -> dict[int, OpenApiResponse]:
    """Schema entries for error answers, all problem details."""
    return {
        code: OpenApiResponse(ProblemSerializer, description="Problem details (RFC 9457).") for code in codes
    }


class UserThrottle(UserRateThrottle):
    """Per-user rate limit; reads the rate from settings at use so it can change without a reload."""

    def get_rate(self) -> str | None:
        return settings.LONGRUN["THROTTLE_USER"]


class AnonThrottle(AnonRateThrottle):
    def get_rate(self) -> str | None:
        return settings.LONGRUN["THROTTLE_ANON"]


class JobCursorPagination(CursorPagination):
    ordering = ("-created_at", "-id")
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200

    def get_page_size(self, request: Request) -> int:
        # DRF silently ignores a bad page_size; a client deserves to know.
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        try:
            return serializers.IntegerField(min_value=1, max_value=self.max_page_size).run_validation(raw)
        except serializers.ValidationError as exc:
            raise serializers.ValidationError({self.page_size_query_param: exc.detail}) from None

    def decode_cursor(self, request: Request):
        try:
            return super().decode_cursor(request)
        except NotFound:
            raise serializers.ValidationError({self.cursor_query_param: ["Invalid cursor."]}) from None

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"] = {"type": "integer", "minimum": 1, "maximum": self.max_page_size}
        return parameters


class JobOrderingFilter(OrderingFilter):
    """`?ordering=` on created, priority, started or finished (prefix `-` for descending).
    Ordering by started or finished lists only the jobs that have started or finished: a cursor
    cannot point between NULLs."""

    ordering_fields = {
        "created_at": "created",
        "priority": "priority",
        "started_at": "started",
        "finished_at": "finished",
    }

    def get_ordering(self, request, queryset, view):
        params = request.query_params.get(self.ordering_param)
        if params is None:
            return ("-created_at", "-id")
        by_name = {name: field for field, name in self.ordering_fields.items()}
        ordering = []
        for term in (t.strip() for t in params.split(",")):
            name = term.lstrip("-")
            if name not in by_name:
                raise serializers.ValidationError(
                    {self.ordering_param: [f"Unknown ordering {name!r}; use one of {', '.join(by_name)}."]}
                )
            ordering.append(("-" if term.startswith("-") else "") + by_name[name])
        # A unique tie-breaker keeps cursors stable when values repeat.
        return (
            (*ordering, "-created_at", "-id")
            if ordering[-1].lstrip("-") != "created_at"
            else (*ordering, "-id")
        )

    def filter_queryset(self, request, queryset, view):
        ordering = self.get_ordering(request, queryset, view)
        for field in ("started_at", "finished_at"):
            if any(term.lstrip("-") == field for term in ordering):
                queryset = queryset.filter(**{f"{field}__isnull": False})
        return queryset.order_by(*ordering) if ordering else queryset

    @classmethod
    def schema_parameter(cls) -> OpenApiParameter:
        return OpenApiParameter(
            "ordering",
            {"type": "string", "enum": [p + n for n in cls.ordering_fields.values() for p in ("", "-")]},
            description="created, priority, started or finished; prefix - for descending. Default: -created.",
        )


def _retry_after(job: Job) -> int | None:
    """How long a poller should wait before asking again; None once the job has ended."""
    if job.is_terminal:
        return None
    if job.status == JobStatus.SCHEDULED and job.run_at is not None:
        return int(min(max((job.run_at - timezone.now()).total_seconds(), 1), 60))
    return 2


def job_etag(job: Job) -> str:
    return f'"{job.version}"'


def etag_matches(etag: str, if_none_match: str) -> bool:
    """If-None-Match uses weak comparison (RFC 9110 13.1.2): W/"3" matches "3"."""
    if if_none_match.strip() == "*":
        return True
    return any(tag.removeprefix("W/") == etag for tag in parse_etags(if_none_match))


class ThrottleBeforePermissionsMixin:
    """DRF checks permissions before throttles, so anonymous callers (answered 401) and callers
    guessing tokens would never be rate limited. Here throttles come right after authentication,
    and a failed authentication counts as an anonymous request."""

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        self.format_kwarg = self.get_format_suffix(**kwargs)
        request.accepted_renderer, request.accepted_media_type = self.perform_content_negotiation(request)
        request.version, request.versioning_scheme = self.determine_version(request, *args, **kwargs)
        try:
            self.perform_authentication(request)
        except AuthenticationFailed:
            self.check_throttles(request)
            raise
        self.check_throttles(request)
        self.check_permissions(request)


class JobViewSet(
    ThrottleBeforePermissionsMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    serializer_class = JobSerializer
    # The cursor paginator takes its ordering from the first backend that has get_ordering.
    filter_backends = [DjangoFilterBackend, JobOrderingFilter]
    filterset_class = JobFilter
    pagination_class = JobCursorPagination
    lookup_value_regex = UUID_PATTERN
    throttle_classes = [UserThrottle, AnonThrottle]

    def get_queryset(self):
        return selectors.job_list_visible(self.request.user)

    def get_object(self) -> Job:
        return get_object_or_404(self.get_queryset(), pk=self.kwargs["pk"])

    def filter_queryset(self, queryset):
        if self.request.query_params.get("owner") and not self.request.user.is_staff:
            raise PermissionDenied("Only staff can filter by owner.")
        return super().filter_queryset(queryset)

    @extend_schema(
        parameters=[JobOrderingFilter.schema_parameter()],
        responses={200: JobSerializer(many=True), **problems(400, 401, 403, 429)},
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """My jobs (all jobs, for staff), newest first unless `ordering` says otherwise."""
        return super().list(request, *args, **kwargs)

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "wait",
                {"type": "integer", "minimum": 0, "maximum": MAX_WAIT_SECONDS},
                description=f"Long-poll: answer as soon as the job's version changes, or after "
                f"this many seconds (at most {MAX_WAIT_SECONDS}). With If-None-Match, waits for a version other "
                "than that one; an unchanged job then answers 304.",
            ),
            OpenApiParameter(
                "If-None-Match", str, OpenApiParameter.HEADER, description="An ETag from an earlier answer."
            ),
        ],
        responses={
            200: OpenApiResponse(
                JobSerializer,
                description="The job. `ETag` carries its version; `Retry-After` "
                "a poll interval while it has not ended.",
            ),
            304: OpenApiResponse(description="Not modified: the version in If-None-Match is current."),
            **problems(400, 401, 404, 429),
        },
    )
    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """One job. Supports ETag/If-None-Match, and long-polling with `?wait=N`."""
        wait = request.query_params.get("wait")
        if wait is not None:
            field = serializers.IntegerField(min_value=0, max_value=MAX_WAIT_SECONDS)
            try:
                field.run_validation(wait)
            except serializers.ValidationError as exc:
                raise serializers.ValidationError({"wait": exc.detail}) from None
        job = self.get_object()
        etag = job_etag(job)
        headers = {"ETag": etag}
        retry_after = _retry_after(job)
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        if_none_match = request.headers.get("If-None-Match")
        if if_none_match and etag_matches(etag, if_none_match):
            return Response(status=status.HTTP_304_NOT_MODIFIED, headers=headers)
        return Response(JobSerializer(job).data, headers=headers)

    @extend_schema(
        request=JobCreateSerializer,
        parameters=[
            OpenApiParameter(
                "Idempotency-Key",
                {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN.pattern},
                OpenApiParameter.HEADER,
                description="Up to 255 printable ASCII characters, unique per request you mean once. "
                "Repeating the request with the same key and body returns the original job (with "
                "`Idempotent-Replayed: true`) and creates nothing; the same key with another body is 422. "
                "Keys are scoped to the user and kept at least 24 hours.",
            )
        ],
        responses={202: JobSerializer, **problems(400, 401, 409, 413, 415, 422, 429)},
    )
    def create(self, request: Request) -> Response:
        """Submit a job. It is persisted at once and runs as soon as a worker is free (or at `run_at`)."""
        submission = JobCreateSerializer(data=request.data)
        submission.is_valid(raise_exception=True)
        key = request.headers.get("Idempotency-Key")
        headers: dict[str, str] = {}
        if key is None:
            job = services.job_create(owner=request.user, **submission.validated_data)
        else:
            if not IDEMPOTENCY_KEY_PATTERN.match(key):
                raise serializers.ValidationError(
                    {"Idempotency-Key": ["Must be 1 to 255 printable ASCII characters without spaces."]}
                )
            try:
                job, replayed = services.job_create_idempotent(
                    owner=request.user,
                    key=key,
                    fingerprint=services.request_fingerprint(request.data),
                    **submission.validated_data,
                )
            except IdempotencyConflict as exc:
                if exc.status == 422:
                    raise UnprocessableIdempotencyKey(exc.message) from None
                raise Conflict(exc.message, code=exc.code) from None
            headers["Idempotency-Key"] = key
            if replayed:
                headers["Idempotent-Replayed"] = "true"
        headers["Location"] = request.build_absolute_uri(reverse("api:job-detail", args=[job.pk]))
        return Response(JobSerializer(job).data, status=status.HTTP_202_ACCEPTED, headers=headers)

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "Last-Event-ID",
                str,
                OpenApiParameter.HEADER,
                description="Sent by EventSource on reconnect: the history entries after this version are "
                "replayed (`event: history`) before the current job.",
            )
        ],
        responses={
            (200, "text/event-stream"): OpenApiResponse(
                str,
                description="Server-Sent Events. `event: job` frames carry `{event, version, job, entry?}` "
                "with `id:` the job's version; `event: history` frames replay missed history entries. Through "
                "Daphne the stream stays open with live updates and heartbeats and closes once the job has ended; "
                "elsewhere it answers the opening frames only (clients reconnect).",
            ),
            **problems(401, 404, 429),
        },
    )
    @action(
        detail=True,
        methods=["get"],
        renderer_classes=[EventStreamRenderer],
        filterset_class=None,
        pagination_class=None,
    )
    def stream(self, request: Request, pk: str) -> Response:
        """Server-Sent Events for one job."""
        job = self.get_object()
        after = last_event_id(request.headers.get("Last-Event-ID"))
        frames = [sse.comment("longrun job stream")]
        if after is not None:
            for entry in selectors.job_events(job, after=after):
                frames.append(sse.frame(id=entry.seq, event="history", data=JobEventSerializer(entry).data))
        if after is None or job.version > after:
            data = {"event": "snapshot", "version": job.version, "job": JobSerializer(job).data}
            frames.append(sse.frame(id=job.version, event="job", data=data, retry=sse.RETRY_MS))
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Job-Version": str(job.version)}
        if job.is_terminal:
            headers["X-Job-Terminal"] = "1"
        return Response(frames, headers=headers)

    @extend_schema(
        operation_id="jobs_stream_all",
        responses={
            (200, "text/event-stream"): OpenApiResponse(
                str,
                description="Server-Sent Events for all my jobs: first the 50 most recent (`event: job`, "
                "`event` = `snapshot`), then every change, with `id:` `<job id>:<version>`. After a reconnect the "
                "snapshot comes again; compare versions.",
            ),
            **problems(401, 429),
        },
    )
    @action(
        detail=False,
        methods=["get"],
        url_path="stream",
        renderer_classes=[EventStreamRenderer],
        filterset_class=None,
        pagination_class=None,
    )
    def stream_all(self, request: Request) -> Response:
        """Server-Sent Events for all my jobs."""
        jobs = (
            selectors.job_list_visible(request.user).filter(owner=request.user).order_by("-created_at")[:50]
        )
        frames = [sse.comment("longrun jobs stream")]
        for job in reversed(list(jobs)):
            data = {"event": "snapshot", "version": job.version, "job": JobSerializer(job).data}
            frames.append(sse.frame(id=f"{job.pk}:{job.version}", event="job", data=data, retry=sse.RETRY_MS))
        return Response(frames, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @extend_schema(responses={200: WebhookDeliverySerializer(many=True), **problems(401, 404, 429)})
    @action(detail=True, methods=["get"], filterset_class=None, pagination_class=None)
    def deliveries(self, request: Request, pk: str) -> Response:
        """The job's webhook deliveries to its callback_url, each with every attempt."""
        deliveries = selectors.job_deliveries(self.get_object())
        return Response(WebhookDeliverySerializer(deliveries, many=True).data)

    @extend_schema(request=None, responses={202: WebhookDeliverySerializer, **problems(401, 404, 409, 429)})
    @action(
        detail=True,
        methods=["post"],
        url_path=r"deliveries/(?P<n>[0-9]{1,9})/redeliver",
        filterset_class=None,
        pagination_class=None,
    )
    def redeliver(self, request: Request, pk: str, n: str) -> Response:
        """Send a delivery again now, with the same webhook-id."""
        delivery = get_object_or_404(selectors.job_deliveries(self.get_object()), n=int(n))
        services.webhook_redeliver(delivery.pk)
        return Response(
            WebhookDeliverySerializer(selectors.job_deliveries(delivery.job).get(pk=delivery.pk)).data,
            status=status.HTTP_202_ACCEPTED,
        )

    @extend_schema(request=None, responses={200: JobSerializer, **problems(401, 404, 409, 429)})
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str) -> Response:
        """Cancel a job: at once if it has not started, cooperatively if it is running. 409 if it
        has already ended."""
        job = services.job_cancel(self.get_object().pk, actor=request.user)
        return Response(JobSerializer(job).data)

    @extend_schema(request=None, responses={202: JobSerializer, **problems(401, 404, 409, 429)})
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: str) -> Response:
        """Run a failed or cancelled job again, as a new attempt of the same job. 409 otherwise."""
        job = services.job_retry(self.get_object().pk, actor=request.user)
        return Response(JobSerializer(job).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "after", {"type": "integer", "minimum": 0}, description="Only events with a larger seq."
            )
        ],
        responses={200: JobEventSerializer(many=True), **problems(400, 401, 404, 429)},
    )
    @action(detail=True, methods=["get"], filterset_class=None, pagination_class=None)
    def events(self, request: Request, pk: str) -> Response:
        """The job's history, oldest first."""
        raw_after = request.query_params.get("after")
        after = None
        if raw_after is not None:
            try:
                after = serializers.IntegerField(min_value=0).run_validation(raw_after)
            except serializers.ValidationError as exc:
                raise serializers.ValidationError({"after": exc.detail}) from None
        events = selectors.job_events(self.get_object(), after=after)
        return Response(JobEventSerializer(events, many=True).data)

    @extend_schema(
        operation_id="jobs_bulk_create",
        request=JobBulkCreateSerializer,
        responses={202: JobBulkCreatedSerializer, **problems(400, 401, 413, 415, 429)},
    )
    @action(detail=False, methods=["post"], url_path="bulk", filterset_class=None, pagination_class=None)
    def bulk(self, request: Request) -> Response:
        """Submit up to 1,000 jobs at once. All are validated first: one bad job refuses the whole
        request (errors name `jobs.N.field`) and nothing is written."""
        body = JobBulkCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        jobs = services.jobs_create_bulk(owner=request.user, submissions=body.validated_data["jobs"])
        data = {"count": len(jobs), "jobs": JobSerializer(jobs, many=True).data}
        return Response(data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        operation_id="jobs_bulk_cancel",
        request=JobBulkCancelSerializer,
        responses={200: JobBulkCancelResultSerializer, **problems(400, 401, 413, 415, 429)},
    )
    @action(detail=False, methods=["post"], url_path="cancel", filterset_class=None, pagination_class=None)
    def cancel_many(self, request: Request) -> Response:
        """Cancel every active job matching the filter: my jobs, or anyone's for staff."""
        body = JobBulkCancelSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        jobs = selectors.job_list_visible(request.user).filter(status__in=ACTIVE_STATUSES)
        if "ids" in body.validated_data:
            jobs = jobs.filter(pk__in=body.validated_data["ids"])
        if "status" in body.validated_data:
            jobs = jobs.filter(status__in=body.validated_data["status"])
        if "type" in body.validated_data:
            jobs = jobs.filter(type=body.validated_data["type"])
        job_ids = list(
            jobs.order_by("created_at").values_list("pk", flat=True)[: settings.LONGRUN["BULK_LIMIT"]]
        )
        counts = services.jobs_cancel(job_ids, actor=request.user)
        return Response({"matched": len(job_ids), **counts})


class UnprocessableIdempotencyKey(Conflict):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_code = "idempotency_key_reused"


class JobTypeListView(ThrottleBeforePermissionsMixin, APIView):
    throttle_classes = [UserThrottle, AnonThrottle]

    @extend_schema(responses={200: JobTypeSerializer(many=True), **problems(401, 429)})
    def get(self, request: Request) -> Response:
        """Every registered job type with its description and the JSON Schema of its params."""
        types = [
            {"name": jt.name, "description": jt.description, "params_schema": jt.params_schema}
            for jt in registry.all_job_types()
        ]
        return Response(JobTypeSerializer(types, many=True).data)


class SigningSecretView(ThrottleBeforePermissionsMixin, APIView):
    throttle_classes = [UserThrottle, AnonThrottle]

    @extend_schema(responses={200: SigningSecretsSerializer, **problems(401, 429)})
    def get(self, request: Request) -> Response:
        """My webhook signing secrets (created on first use): verify deliveries with any of them."""
        return Response(SigningSecretsSerializer({"secrets": services.signing_secrets(request.user)}).data)


class SigningSecretRotateView(ThrottleBeforePermissionsMixin, APIView):
    throttle_classes = [UserThrottle, AnonThrottle]

    @extend_schema(request=None, responses={200: SigningSecretsSerializer, **problems(401, 429)})
    def post(self, request: Request) -> Response:
        """A new signing secret. The previous one stays valid for a grace period (24 h), and
        deliveries carry a signature for each valid secret meanwhile."""
        return Response(
            SigningSecretsSerializer({"secrets": services.signing_secret_rotate(request.user)}).data
        )


class StatsView(ThrottleBeforePermissionsMixin, APIView):
    throttle_classes = [UserThrottle, AnonThrottle]

    @extend_schema(responses={200: StatsSerializer, **problems(401, 429)})
    def get(self, request: Request) -> Response:
        """Counts per status and per type of the jobs I can see, and jobs finished per minute over
        the last hour (oldest minute first)."""
        return Response(StatsSerializer(selectors.job_stats(request.user)).data)
