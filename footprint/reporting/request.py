"""What a report is asked for: ``ReportRequest``, its validation, and the period filters.

``--by`` is ``model``, ``day``, ``region``, ``host`` or ``tag:NAME`` (chargeback by any
tag given to ``track``/``query``). A tag name is a simple identifier (letters, digits,
``_`` and ``-``, starting with a letter or ``_``): it goes into SQL as a JSON path, so
nothing else is accepted.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from footprint.storage.models import QueryRecord, table_of

BY_CHOICES = ("model", "day", "region", "host", "tag:NAME")
TAG_PREFIX = "tag:"
_TAG_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

Period = tuple[_dt.datetime | None, _dt.datetime | None]  # [since, until), None: open


class ReportError(ValueError):
    """Bad input or nothing to report: one line saying why (the CLI exits 2)."""


@dataclass
class ReportRequest:
    """What to report on. ``until`` is exclusive; dates are UTC."""

    db: str
    since: _dt.datetime | None = None
    until: _dt.datetime | None = None
    models: list[str] | None = None
    by: str = "model"
    compare: list[str] = field(default_factory=list)
    allow_empty: bool = False


def tag_name(by: str) -> str | None:
    """The tag of ``--by tag:NAME`` (None for the other groupings)."""
    return by[len(TAG_PREFIX) :] if by.startswith(TAG_PREFIX) else None


def check_by(by: str) -> str:
    """``by`` when it is one of ``BY_CHOICES`` (any valid NAME for ``tag:NAME``); else
    ``ReportError`` saying what is accepted."""
    name = tag_name(by)
    if name is not None:
        if not _TAG_NAME.match(name):
            raise ReportError(
                f"--by tag:NAME: {name!r} is not a tag name (letters, digits, _ and -, "
                "starting with a letter or _, at most 64)"
            )
        return by
    if by not in BY_CHOICES:
        raise ReportError(f"--by must be one of {'|'.join(BY_CHOICES)}, got {by!r}")
    return by


def group_key(by: str) -> str:
    """The key of each ``groups`` row of the JSON report for ``--by``."""
    if tag_name(by) is not None:
        return by
    return {"day": "day", "region": "zone", "host": "host"}[by]


def parse_when(text: str, *, option: str, end: bool = False) -> _dt.datetime:
    """``YYYY-MM-DD`` or an ISO 8601 date-time (UTC unless it says otherwise).

    With ``end=True`` a bare date means the end of that day (``--until 2026-03-08``
    includes the 8th).
    """
    raw = text.strip()
    try:
        if _DATE.match(raw):
            day = _dt.date.fromisoformat(raw)
            when = _dt.datetime(day.year, day.month, day.day, tzinfo=_dt.timezone.utc)
            return when + _dt.timedelta(days=1) if end else when
        when = _dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ReportError(
            f"{option}: not a date: {text!r} (use YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS][+HH:MM])"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return when.astimezone(_dt.timezone.utc)


def split_names(values: Iterable[str] | None) -> list[str]:
    """``--model a --model b,c`` -> ``[a, b, c]`` (order kept, duplicates dropped)."""
    out: list[str] = []
    for value in values or ():
        for name in value.split(","):
            name = name.strip()
            if name and name not in out:
                out.append(name)
    return out


def as_utc(value: Any) -> _dt.datetime | None:
    """A datetime (or SQLite's text of one) in UTC; naive means UTC."""
    if value is None:
        return None
    if isinstance(value, str):  # SQLite text from an aggregate
        value = _dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=_dt.timezone.utc)
    return value.astimezone(_dt.timezone.utc)


def period_words(request: ReportRequest) -> str:
    since = request.since.isoformat() if request.since else "the beginning"
    until = request.until.isoformat() if request.until else "now"
    return f"the period {since} .. {until}"


def time_filters(
    time_column: Any, model_column: Any, start: Any, end: Any, models: list[str] | None
) -> list[Any]:
    """``start <= time < end`` and ``model IN models``, each where given."""
    out = []
    if start is not None:
        out.append(time_column >= start)
    if end is not None:
        out.append(time_column < end)
    if models:
        out.append(model_column.in_(models))
    return out


def query_filters(
    request: ReportRequest, with_models: bool = True, period: Period | None = None
) -> list[Any]:
    """The filters of ``queries`` rows in the report (or in ``period``)."""
    q = table_of(QueryRecord).c
    since, until = period if period is not None else (request.since, request.until)
    models = request.models if with_models else None
    return time_filters(q.started_at, q.model, since, until, models)
