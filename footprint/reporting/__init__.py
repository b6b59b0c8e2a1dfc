"""Sustainability reports: per-model energy, CO2e and cost over a period, with the method.

``build_report`` aggregates in the database and returns plain data (the JSON output);
``footprint.reporting.render.write_report`` renders it as HTML, Markdown, CSV or JSON
files. ``footprint.reporting.build`` lists the modules each step lives in.
"""

from footprint.reporting.build import build_report
from footprint.reporting.request import (
    BY_CHOICES,
    ReportError,
    ReportRequest,
    check_by,
    parse_when,
    split_names,
)
from footprint.reporting.whatif import cleanest_zones

__all__ = [
    "BY_CHOICES",
    "ReportError",
    "ReportRequest",
    "build_report",
    "check_by",
    "cleanest_zones",
    "parse_when",
    "split_names",
]
