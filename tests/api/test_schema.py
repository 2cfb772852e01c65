"""Property-based testing of the API against its own OpenAPI schema (schemathesis): no 5xx, no
answer that breaks the schema, no accepted request that the schema forbids. Bounded by
`max_examples` so the suite stays fast."""

from __future__ import annotations

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, settings
from rest_framework.authtoken.models import Token

from project.wsgi import application

# The schema the API serves (GET /api/schema/ needs a login, and no user exists at collection
# time), called against the WSGI application.
schema = schemathesis.openapi.from_dict(SchemaGenerator().get_schema(request=None, public=True))
schema.app = application


@pytest.fixture(autouse=True)
def keep_test_connection():
    """Requests go straight to the WSGI app, not through Django's test client, so stop the
    request signals from closing the test's database connection (as the test client does)."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def token(user) -> str:
    return Token.objects.create(user=user).key


@pytest.mark.django_db
@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_schema(case, token):
    # Every default check but "positive data acceptance": a schema-valid request may still be
    # refused for reasons no schema states (an Idempotency-Key reused with another body: 422).
    case.call_and_validate(
        headers={"Authorization": f"Token {token}"},
        excluded_checks=[schemathesis.checks.positive_data_acceptance],
    )
