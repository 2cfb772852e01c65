from __future__ import annotations

import importlib
from typing import Any

from django.apps import AppConfig
from django.core import checks


class TasksAppConfig(AppConfig):
    name = "tasks_app"
    verbose_name = "Jobs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Register the built-in job types, and any configured elsewhere.
        from . import job_types  # noqa: F401
        from .conf import app_settings

        for module in app_settings.JOB_MODULES:
            importlib.import_module(module)
        checks.register(check_settings)

        from django.contrib.auth.signals import user_login_failed
        from django.core.signals import request_finished

        from .web.middleware import forget_request_id, record_failed_login

        user_login_failed.connect(record_failed_login, dispatch_uid="longrun-failed-login")
        request_finished.connect(forget_request_id, dispatch_uid="longrun-request-id")

        from .worker import connections, presence

        presence.connect()
        connections.connect()


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """A misspelt key in settings.LONGRUN would be silently ignored: say so."""
    from django.conf import settings

    from .conf import AppSettings

    unknown = sorted(set(getattr(settings, "LONGRUN", None) or {}) - AppSettings.names())
    return [
        checks.Warning(
            f"settings.LONGRUN has an unknown key {name!r}.",
            hint=f"Known keys: {', '.join(sorted(AppSettings.names()))}.",
            id="longrun.W001",
        )
        for name in unknown
    ]
