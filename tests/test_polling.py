"""The one rule for `?wait=`: the REST API and the long-poll front (realtime.http) take exactly
the same values; the front serves the ones that wait (1-30 s) and leaves the rest to the API."""

from __future__ import annotations

import pytest

from tasks_app.realtime.http import _wait_of
from tests.helpers import detail_url, make_job

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "raw", ["0", "1", "30", "31", "-1", "abc", "", "1.5", " 5", "5&wait=40", "99999999999"]
)
def test_the_api_and_the_live_front_agree_on_wait(api, user, raw):
    job = make_job(user)
    accepted_by_api = api.get(f"{detail_url(job.pk)}?wait={raw}").status_code == 200
    served_by_front = _wait_of({"query_string": f"wait={raw}".encode()})
    waits = accepted_by_api and served_by_front is not None
    assert accepted_by_api == (raw in ("0", "1", "30", " 5"))
    assert (served_by_front is not None) == (accepted_by_api and raw.strip() != "0")
    assert not waits or 1 <= served_by_front <= 30
