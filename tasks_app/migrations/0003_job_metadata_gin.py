"""A GIN index on Job.metadata for `?metadata=key:value` and the admin's metadata search, on
PostgreSQL only (SQLite has no GIN; it filters by reading the key)."""

from django.db import migrations

CREATE = (
    "CREATE INDEX IF NOT EXISTS job_metadata_gin_idx ON tasks_app_job USING gin (metadata jsonb_path_ops)"
)
DROP = "DROP INDEX IF EXISTS job_metadata_gin_idx"


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("tasks_app", "0002_webhooks")]
    operations = [migrations.RunPython(forwards, backwards)]
