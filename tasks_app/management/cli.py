"""What the command-line tools share (`manage.py jobs`, `manage.py schedules`)."""

from __future__ import annotations

import os
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import CommandError


def acting_user(username: str | None) -> Any:
    """The user a command acts as: `--user`, else LONGRUN_CLI_USER, else the first superuser, so
    the history records who did it. CommandError when there is none."""
    user_model = get_user_model()
    username = username or os.environ.get("LONGRUN_CLI_USER")
    if username:
        try:
            return user_model._default_manager.get_by_natural_key(username)
        except user_model.DoesNotExist:
            raise CommandError(f"No user named {username!r}.") from None
    first = user_model._default_manager.filter(is_superuser=True, is_active=True).order_by("pk").first()
    if first is None:
        raise CommandError("No superuser to act as: pass --user or create one (manage.py ensureadmin).")
    return first
