"""The REST API: thin callers of selectors (reads) and services (writes)."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from . import registry, selectors, services
from .filters import JobFilter
from .models import Job
from .serializers import JobCreateSerializer, JobEventSerializer, JobSerializer, JobTypeSerializer

UUID_PATTERN = r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"


class JobCursorPagination(CursorPagination):
    ordering = ("-created_at", "-id")
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200


class JobViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = JobSerializer
    filterset_class = JobFilter
    pagination_class = JobCursorPagination
    lookup_value_regex = UUID_PATTERN

    def get_queryset(self):
        return selectors.job_list_visible(self.request.user)

    def get_object(self) -> Job:
        return get_object_or_404(self.get_queryset(), pk=self.kwargs["pk"])

    @extend_schema(request=JobCreateSerializer, responses={202: JobSerializer})
    def create(self, request: Request) -> Response:
        """Submit a job. It is persisted at once and runs as soon as a worker is free."""
        submission = JobCreateSerializer(data=request.data)
        submission.is_valid(raise_exception=True)
        job = services.job_create(owner=request.user, **submission.validated_data)
        location = request.build_absolute_uri(reverse("api:job-detail", args=[job.pk]))
        return Response(JobSerializer(job).data, status=status.HTTP_202_ACCEPTED, headers={"Location": location})

    @extend_schema(request=None, responses={200: JobSerializer})
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str) -> Response:
        """Cancel a job: at once if it has not started, cooperatively if it is running. 409 if it
        has already ended."""
        job = services.job_cancel(self.get_object().pk, actor=request.user)
        return Response(JobSerializer(job).data)

    @extend_schema(request=None, responses={202: JobSerializer})
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: str) -> Response:
        """Run a failed or cancelled job again, as a new attempt of the same job. 409 otherwise."""
        job = services.job_retry(self.get_object().pk, actor=request.user)
        return Response(JobSerializer(job).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        parameters=[OpenApiParameter("after", int, description="Only events with a larger seq.")],
        responses={200: JobEventSerializer(many=True)},
    )
    @action(detail=True, methods=["get"], filterset_class=None, pagination_class=None)
    def events(self, request: Request, pk: str) -> Response:
        """The job's history, oldest first."""
        after = serializers.IntegerField(min_value=0, required=False)
        raw_after = request.query_params.get("after")
        value = None
        if raw_after is not None:
            try:
                value = after.run_validation(raw_after)
            except serializers.ValidationError as exc:
                raise serializers.ValidationError({"after": exc.detail}) from None
        events = selectors.job_events(self.get_object(), after=value)
        return Response(JobEventSerializer(events, many=True).data)


class JobTypeListView(APIView):
    @extend_schema(responses={200: JobTypeSerializer(many=True)})
    def get(self, request: Request) -> Response:
        """Every registered job type with its description and the JSON Schema of its params."""
        types = [
            {"name": jt.name, "description": jt.description, "params_schema": jt.params_schema}
            for jt in registry.all_job_types()
        ]
        return Response(JobTypeSerializer(types, many=True).data)
