"""`worker.connections`: after a task, a connection that had a database error and no longer
answers is closed (the next task opens a new one); nothing else is touched or queried."""

from __future__ import annotations

from unittest import mock

from tasks_app.worker import connections as worker_connections


def fake(*, open_: bool = True, errors: bool, usable: bool = True) -> mock.Mock:
    connection = mock.Mock(connection=object() if open_ else None, errors_occurred=errors)
    connection.is_usable.return_value = usable
    return connection


def test_only_a_connection_that_failed_and_no_longer_answers_is_closed(monkeypatch):
    broken = fake(errors=True, usable=False)
    blip = fake(errors=True, usable=True)  # an error, but the server still answers
    healthy = fake(errors=False)
    never_opened = fake(open_=False, errors=True)
    monkeypatch.setattr(
        worker_connections.connections, "all", lambda initialized_only: [broken, blip, healthy, never_opened]
    )
    worker_connections.close_broken_connections()
    broken.close.assert_called_once()
    blip.close.assert_not_called()
    healthy.close.assert_not_called()
    healthy.is_usable.assert_not_called()  # a task without errors costs no health query
    never_opened.close.assert_not_called()
