"""The primitives of a state change: the conditional UPDATE with the history entry it records,
and text the database can store.

A change is one statement where the database allows it. On PostgreSQL,

    WITH changed AS (UPDATE job SET ..., version = version + 1 WHERE id = ... AND <condition>
                     RETURNING job.*, <owner's username>),
         entry AS (INSERT INTO jobevent (...) SELECT ... FROM changed RETURNING id, message)
    SELECT changed.*, entry.id, entry.message FROM changed LEFT JOIN entry ON TRUE

writes the job and its history entry atomically and hands back both, in one round trip. SQLite
(no data-modifying CTEs) runs `UPDATE ... RETURNING` and the INSERT as two statements, inside
the caller's transaction. Either way the row that comes back is the row the statement left, so
the job's representation needs no second read.
"""

from __future__ import annotations

import functools
import json
import string
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias, cast

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import F, Field
from django.db.models.sql import UpdateQuery
from django.utils import timezone

from ..models import Job, JobEvent, JobId

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    # Who asked for a change: a user (API, admin, pages), or None for the system.
    Actor: TypeAlias = User | AnonymousUser | None

# The fields of the changed row a note's message may name, as {attempts}.
NOTE_FIELDS = ("attempts", "max_attempts", "version")


def storable_text(text: str) -> str:
    """PostgreSQL text and jsonb cannot hold NUL; show it escaped instead of failing the write."""
    return text.replace("\x00", "\\x00")


NUL_MESSAGE = "Must not contain NUL (\\u0000) characters."
SURROGATE_MESSAGE = "Must be valid Unicode text: a lone surrogate (\\ud800-\\udfff) cannot be stored."


def has_nul(value: Any) -> bool:
    """Whether a JSON value holds a NUL character anywhere (PostgreSQL would refuse it)."""
    return "\\u0000" in json.dumps(value, cls=DjangoJSONEncoder)


def surrogate_path(value: Any, path: str = "") -> str | None:
    """The dotted path of the first string (or key) holding a lone surrogate, or None."""
    if isinstance(value, str):
        return None if value.isascii() or _encodable(value) else path
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{path}.{key}" if path else str(key)
            if not _encodable(str(key)):
                return here.encode("utf-8", "backslashreplace").decode()
            if (found := surrogate_path(item, here)) is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if (found := surrogate_path(item, f"{path}.{index}" if path else str(index))) is not None:
                return found
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def literal(text: str) -> str:
    """`text` as a note template that names no field (braces kept as they are)."""
    return text.replace("{", "{{").replace("}", "}}")


@dataclass(frozen=True)
class Note:
    """The history entry a change records. `template` is the message; it may name fields of the
    changed row ({attempts}, {max_attempts}, {version}), filled from the row the change left.
    Text from elsewhere goes through `literal()`."""

    kind: str
    template: str = ""
    data: dict[str, Any] | None = None
    actor: Actor = None

    def message(self, job: Job) -> str:
        return self.template.format(**{name: getattr(job, name) for name in NOTE_FIELDS})

    @property
    def actor_user(self) -> User | None:
        actor = self.actor
        return actor if actor is not None and not isinstance(actor, AnonymousUser) else None


class Changed(NamedTuple):
    job: Job
    entry: JobEvent | None


Where = dict[str, Any]


def update_if(job_id: JobId, where: Where, *, note: Note | None = None, **changes: Any) -> Changed | None:
    """Apply `changes` to the job if it matches `where`, bumping its version, and record `note`
    in its history at that version; None if the condition did not hold (another change won).

    `where` is a dict of field lookups, all of which must hold: {"status": "queued"},
    {"status__in": [...]}, {"cancel_requested_at__isnull": True}, {"run_at__lte": now}. One
    statement on PostgreSQL (atomic by itself); on other databases two, which the caller runs in
    a transaction."""
    changes["version"] = _NEXT_VERSION
    connection = connections[Job.objects.db]
    update_sql, params = _update_statement(connection, job_id, where, changes)
    shape = _row_shape(connection.alias)
    now = timezone.now()
    if note is not None and connection.vendor == "postgresql":
        return _update_and_record(connection, shape, update_sql, list(params), note, now)
    with connection.cursor() as cursor:
        cursor.execute(f"{update_sql} RETURNING {shape.columns}", params)
        row = cursor.fetchone()
    if row is None:
        return None
    job = shape.job(row, connection)
    if note is None:
        return Changed(job, None)
    entry = JobEvent(
        job=job,
        seq=job.version,
        kind=note.kind,
        status=job.status,
        message=note.message(job),
        data=note.data or {},
        actor=note.actor_user,
    )
    entry.save(force_insert=True)
    return Changed(job, entry)


def _update_and_record(
    connection: BaseDatabaseWrapper,
    shape: _RowShape,
    update_sql: str,
    params: list[Any],
    note: Note,
    now: Any,
) -> Changed | None:
    quote = connection.ops.quote_name
    message_sql, message_params = _message_sql(note.template)
    event = JobEvent._meta
    actor = note.actor_user
    sql = (
        f"WITH changed AS ({update_sql} RETURNING {shape.columns}), "
        f"entry AS (INSERT INTO {quote(event.db_table)} "
        f"({', '.join(quote(name) for name in ('job_id', 'seq', 'kind', 'status', 'message', 'data', 'actor_id', 'created_at'))}) "
        f"SELECT changed.{quote('id')}, changed.{quote('version')}, %s, changed.{quote('status')}, {message_sql}, %s, %s, %s "
        f"FROM changed RETURNING {quote('id')}, {quote('message')}) "
        f"SELECT changed.*, entry.{quote('id')}, entry.{quote('message')} FROM changed LEFT JOIN entry ON TRUE"
    )  # fmt: skip
    data = cast(Field, event.get_field("data")).get_db_prep_save(note.data or {}, connection)
    created = cast(Field, event.get_field("created_at")).get_db_prep_save(now, connection)
    params = [*params, note.kind, *message_params, data, actor.pk if actor else None, created]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return None
    job = shape.job(row[:-2], connection)
    entry = JobEvent(
        pk=row[-2],
        job=job,
        seq=job.version,
        kind=note.kind,
        status=job.status,
        message=row[-1],
        data=note.data or {},
        actor=actor,
        created_at=now,
    )
    entry._state.adding = False
    return Changed(job, entry)


# --- the UPDATE, compiled once per shape ----------------------------------------------------------
#
# Building and compiling an UPDATE through the ORM (filter, add_update_values, as_sql) cost about
# half of a transition's CPU time. The services use a handful of shapes (which fields are set,
# which are NULL, which conditions), so each shape is compiled once into SQL with placeholders,
# and each call only prepares its values, with the fields' own get_db_prep_* methods.

_NEXT_VERSION = F("version") + 1
_OPERATORS = {"exact": "=", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}


def _lookup(name: str) -> tuple[str, str]:
    field, _, lookup = name.partition("__")
    return field, lookup or "exact"


def _kind(value: Any) -> Any:
    """What about a value changes the SQL: NULL, an expression (by its repr), a list's length."""
    if value is None:
        return None
    if hasattr(value, "resolve_expression"):
        return ("expression", repr(value))
    if isinstance(value, (list, tuple, set, frozenset)):
        return ("list", len(value))
    if isinstance(value, bool):
        return value
    return "value"


def _update_statement(
    connection: BaseDatabaseWrapper, job_id: JobId, where: Where, changes: dict[str, Any]
) -> tuple[str, list[Any]]:
    key = (
        connection.alias,
        tuple((name, _kind(value)) for name, value in changes.items()),
        tuple((name, _kind(value)) for name, value in where.items()),
    )
    template = _statements.get(key)
    if template is None:
        template = _statements[key] = _UpdateTemplate(connection, changes, where)
    return template.sql, template.params(connection, job_id, where, changes)


class _UpdateTemplate:
    def __init__(self, connection: BaseDatabaseWrapper, changes: dict[str, Any], where: Where) -> None:
        quote = connection.ops.quote_name
        table = quote(Job._meta.db_table)
        query = UpdateQuery(Job)
        compiler = query.get_compiler(connection=connection)
        sets: list[str] = []
        # Per change: a function of (value, connection) giving its parameters, in order.
        self.set_params: list[tuple[str, Any]] = []
        for name, value in changes.items():
            field = cast(Field, Job._meta.get_field(name))
            column = quote(field.column)
            if value is None:
                sets.append(f"{column} = NULL")
            elif hasattr(value, "resolve_expression"):
                resolved = value.resolve_expression(query, allow_joins=False, for_save=True)
                expression_sql, expression_params = compiler.compile(resolved)
                sets.append(f"{column} = {expression_sql}")
                self.set_params.append((name, ("constant", tuple(expression_params))))
            else:
                sets.append(f"{column} = %s")
                self.set_params.append((name, ("save", field)))
        conditions = [f"{table}.{quote(Job._meta.pk.column)} = %s"]
        self.where_params: list[tuple[str, Field]] = []
        for name, value in where.items():
            field_name, lookup = _lookup(name)
            field = cast(Field, Job._meta.get_field(field_name))
            column = f"{table}.{quote(field.column)}"
            if lookup == "isnull" or (lookup == "exact" and value is None):
                null = value if lookup == "isnull" else True
                conditions.append(f"{column} IS {'' if null else 'NOT '}NULL")
            elif lookup == "in":
                conditions.append(f"{column} IN ({', '.join(['%s'] * len(value))})")
                self.where_params.append((name, field))
            elif lookup in _OPERATORS:
                conditions.append(f"{column} {_OPERATORS[lookup]} %s")
                self.where_params.append((name, field))
            else:
                raise ValueError(f"unsupported lookup {name!r} in a job transition")
        self.sql = f"UPDATE {table} SET {', '.join(sets)} WHERE {' AND '.join(conditions)}"
        self.pk: Field = Job._meta.pk

    def params(
        self, connection: BaseDatabaseWrapper, job_id: JobId, where: Where, changes: dict[str, Any]
    ) -> list[Any]:
        params: list[Any] = []
        for name, (how, detail) in self.set_params:
            if how == "constant":
                params.extend(detail)
            else:
                params.append(detail.get_db_prep_save(changes[name], connection))
        params.append(self.pk.get_db_prep_value(job_id, connection))
        for name, field in self.where_params:
            value = where[name]
            if name.endswith("__in"):
                params.extend(field.get_db_prep_value(item, connection) for item in value)
            else:
                params.append(field.get_db_prep_value(value, connection))
        return params


_statements: dict[Any, _UpdateTemplate] = {}


@functools.lru_cache(maxsize=64)
def _message_sql(template: str) -> tuple[str, tuple[str, ...]]:
    """A note template as SQL: concat() of its literal parts (parameters) and the changed row's
    fields. Only the fields in NOTE_FIELDS can be named."""
    pieces: list[str] = []
    params: list[str] = []
    for text, field, _, _ in string.Formatter().parse(template):
        if text:
            pieces.append("%s")
            params.append(text)
        if field is not None:
            if field not in NOTE_FIELDS:
                raise ValueError(f"a note can name {NOTE_FIELDS}, not {field!r}")
            pieces.append(f'changed."{field}"')
    if not pieces:
        return "''", ()
    # %s params are text; the concatenation of text and integers is text.
    return "concat(" + ", ".join(f"{piece}::text" for piece in pieces) + ")", tuple(params)


class _RowShape:
    """The columns a job UPDATE returns and how to turn its row into a `Job` with its owner, so
    the job's representation needs no further query."""

    def __init__(self, alias: str) -> None:
        connection = connections[alias]
        quote = connection.ops.quote_name
        table = Job._meta.db_table
        user_model = get_user_model()
        self.alias = alias
        self.attnames = [field.attname for field in Job._meta.concrete_fields]
        self.converters = []
        for field in Job._meta.concrete_fields:
            column = field.get_col(table)
            self.converters.append(
                (column, connection.ops.get_db_converters(column) + column.get_db_converters(connection))
            )
        username = cast(Field, user_model._meta.get_field(user_model.USERNAME_FIELD)).column
        owner = (
            f"(SELECT {quote(username)} FROM {quote(user_model._meta.db_table)} "
            f"WHERE {quote(user_model._meta.pk.column)} = {quote(table)}.{quote('owner_id')})"
        )
        fields = (f"{quote(table)}.{quote(field.column)}" for field in Job._meta.concrete_fields)
        self.columns = ", ".join([*fields, f"{owner} AS {quote('_owner_name')}"])
        self.user_model = user_model
        # Owners as the representation needs them (id and username), one instance per owner.
        self.owners: dict[tuple[Any, str], Any] = {}

    def job(self, row: Any, connection: BaseDatabaseWrapper) -> Job:
        values = []
        for value, (column, converters) in zip(row, self.converters):
            for converter in converters:
                value = converter(value, column, connection)
            values.append(value)
        job = Job.from_db(self.alias, self.attnames, values)
        key = (job.owner_id, row[len(values)])
        owner = self.owners.get(key)
        if owner is None:
            if len(self.owners) > 1000:
                self.owners.clear()
            owner = self.owners[key] = self.user_model(pk=key[0], **{self.user_model.USERNAME_FIELD: key[1]})
        Job.owner.field.set_cached_value(job, owner)
        return job


@functools.lru_cache(maxsize=8)
def _row_shape(alias: str) -> _RowShape:
    return _RowShape(alias)


def actor_suffix(actor: Actor) -> str:
    """ " by alice" for a history message, or nothing for the system."""
    return f" by {actor.get_username()}" if actor is not None and not isinstance(actor, AnonymousUser) else ""
