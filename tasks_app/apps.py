from django.apps import AppConfig


class TasksAppConfig(AppConfig):
    name = "tasks_app"
    verbose_name = "Jobs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        import importlib

        from django.conf import settings

        # Register the built-in job types, and any configured elsewhere.
        from . import job_types  # noqa: F401

        for module in settings.LONGRUN["JOB_MODULES"]:
            importlib.import_module(module)
