"""Log lines that say what they are about: a request id on every line a web request writes, and
the job's id, type, attempt and worker on every line written while a job runs. The fields live
in a context variable (`bound`), so they follow the request or the job through threads started
with its context; `ContextFilter` copies them onto each record, and the formatter (JSON lines or
plain text, `LOG_FORMAT`) writes them."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any

_fields: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "longrun_log_fields", default=MappingProxyType({})
)

# The fields a record may carry, in the order plain text shows them.
FIELDS = ("request_id", "job_id", "job_type", "attempt", "worker")


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Add `fields` to every line logged inside the block (nested blocks add to the outer)."""
    token = _fields.set({**_fields.get(), **fields})
    try:
        yield
    finally:
        _fields.reset(token)


def bind_until_unbound(**fields: Any) -> None:
    """Add `fields` to the current context until `unbind`: for a web request, whose last line
    (Django's "Not Found", written after the middleware has returned) must carry them too."""
    _fields.set({**_fields.get(), **fields})


def unbind(*names: str) -> None:
    current = _fields.get()
    if any(name in current for name in names):
        _fields.set({key: value for key, value in current.items() if key not in names})


class ContextFilter(logging.Filter):
    """Copies the bound fields onto the record (absent ones as None, so formats never fail)."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = _fields.get()
        for name in FIELDS:
            if not hasattr(record, name):
                setattr(record, name, current.get(name))
        return True


class PlainFormatter(logging.Formatter):
    """`time LEVEL logger: message [job_id=... attempt=...]`: the bound fields that are set."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = " ".join(f"{name}={getattr(record, name)}" for name in FIELDS if getattr(record, name, None))
        return f"{line} [{extra}]" if extra else line
