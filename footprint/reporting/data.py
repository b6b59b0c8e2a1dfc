"""The names older code imports from ``footprint.reporting.data``, from where they live now.

The report's data is built by ``footprint.reporting.build`` from modules that each do one
job: ``request`` (what is asked), ``database`` (opening the database), ``grouped`` and
``sums`` (the grouped sums), ``capacity`` (idle energy and GPU time held), ``tags``
(chargeback by tag), ``percentiles``, ``figures``, ``whatif`` and ``notes``. New code
imports from those.
"""

from __future__ import annotations

from footprint.reporting.build import REPORT_SCHEMA, build_report
from footprint.reporting.database import (
    SqliteAccess,
    database_name,
    open_report_engine,
    probe_sqlite,
    read_error,
    read_only_engine,
    reading_db,
)
from footprint.reporting.figures import TOP_MODELS, shown_models
from footprint.reporting.request import (
    BY_CHOICES,
    ReportError,
    ReportRequest,
    parse_when,
    split_names,
)
from footprint.reporting.whatif import cleanest_zones

__all__ = [
    "BY_CHOICES",
    "REPORT_SCHEMA",
    "TOP_MODELS",
    "ReportError",
    "ReportRequest",
    "SqliteAccess",
    "build_report",
    "cleanest_zones",
    "database_name",
    "open_report_engine",
    "parse_when",
    "probe_sqlite",
    "read_error",
    "read_only_engine",
    "reading_db",
    "shown_models",
    "split_names",
]
