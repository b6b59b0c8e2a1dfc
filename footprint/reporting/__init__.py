"""Sustainability reports: per-model energy, CO2e and cost over a period, with the method.

``build_report`` aggregates in the database and returns plain data (the JSON output);
``write_report`` renders it as HTML, Markdown, CSV or JSON files.
"""

from footprint.reporting.data import (
    BY_CHOICES,
    ReportError,
    ReportRequest,
    build_report,
    cleanest_zones,
    parse_when,
    split_names,
)

__all__ = [
    "BY_CHOICES",
    "ReportError",
    "ReportRequest",
    "build_report",
    "cleanest_zones",
    "parse_when",
    "split_names",
]
