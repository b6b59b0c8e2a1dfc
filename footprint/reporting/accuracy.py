"""The attribution accuracy a report may quote: read from ``footprint/bench/accuracy.json``.

``footprint bench accuracy --write`` runs fixed scenarios on the simulated GPU against its
exact energy and writes that file. A report quotes it only while it describes the code
that runs: its ``version`` must be this footprint's and its ``source_digest`` the digest of
the attribution code (``source_digest()``) as installed. Otherwise, or when the file is
missing or malformed, ``published_accuracy()`` returns None and reports say that no
accuracy benchmark has been recorded for this version: no figure is ever typed by hand.

The file (JSON)::

    {"benchmark": "accuracy", "version": "0.1.0", "source_digest": "<hex sha256>",
     "simulator": {"idle_w": 60, "busy_w": 400, "update_period_s": 0.1,
                   "sampling_period_s": 0.05},
     "scenarios": [{"name": "short-sequential", "description": "…", "queries": 300,
                    "total_error_pct": 0.31,
                    "per_query_error_pct": {"p50": 1.2, "p95": 4.0, "max": 9.1},
                    "long_queries": 0, "long_query_error_pct": null,
                    "within_bound_pct": 100.0}, …],
     "not_covered": "one sentence of what the simulator does not model"}

Error percentages are absolute values; ``long_query_error_pct`` covers the queries of
1 s or more ({"p50", "p95", "max"}), null when the scenario has none. Other keys (the
run's ``scale``, its ``targets``, a signed total error) may be present and are not needed.
"""

from __future__ import annotations

import hashlib
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["DIGEST_FILES", "accuracy_path", "published_accuracy", "source_digest"]

# The files whose bytes, concatenated in this order, make ``source_digest``: the code
# whose accuracy the benchmark measures (paths inside the ``footprint`` package).
DIGEST_FILES = (
    "attribution/__init__.py",
    "attribution/energy.py",
    "attribution/idle.py",
    "attribution/resolver.py",
    "attribution/shares.py",
    "sampling/__init__.py",
    "sampling/sampler.py",
    "sampling/ticks.py",
    "sampling/timeline.py",
    "sensors/simulated/__init__.py",
    "sensors/simulated/gpu.py",
    "sensors/simulated/loads.py",
    "sensors/simulated/sensor.py",
    "sensors/simulated/spec.py",
    "sensors/nvml.py",
    "runtime/local.py",
    "runtime/spans.py",
    "runtime/devices.py",
    "runtime/idle.py",
    "runtime/measuring.py",
    "runtime/pending.py",
    "runtime/records.py",
    "runtime/settling.py",
    "runtime/simload.py",
    "runtime/worker.py",
)
# Where the benchmark writes its figures, inside the package; tests point it elsewhere.
ACCURACY_FILE: Path | None = None
_STATS = ("p50", "p95", "max")


def _package_file(*parts: str) -> Any:
    """A file of the installed ``footprint`` package (a Traversable)."""
    node = resources.files("footprint")
    for part in parts:
        node = node.joinpath(part)
    return node


def accuracy_path() -> Path:
    """``footprint/bench/accuracy.json`` of the installed package (or ``ACCURACY_FILE``)."""
    if ACCURACY_FILE is not None:
        return Path(ACCURACY_FILE)
    return Path(str(_package_file("bench", "accuracy.json")))


def source_digest() -> str:
    """Hex sha256 of the attribution code as installed (``DIGEST_FILES``, in order).

    Raises ``OSError`` when one of the files cannot be read.
    """
    digest = hashlib.sha256()
    for name in DIGEST_FILES:
        digest.update(_package_file(*name.split("/")).read_bytes())
    return digest.hexdigest()


def _number(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def _stats(value: Any) -> bool:
    return isinstance(value, dict) and all(_number(value.get(k)) for k in _STATS)


def _valid(data: Any) -> bool:
    """Whether ``data`` has every field a report quotes, with numbers where numbers go."""
    if not isinstance(data, dict) or data.get("benchmark") != "accuracy":
        return False
    simulator, scenarios = data.get("simulator"), data.get("scenarios")
    if not isinstance(simulator, dict) or not isinstance(data.get("not_covered"), str):
        return False
    if not isinstance(scenarios, list) or not scenarios:
        return False
    for s in scenarios:
        if not isinstance(s, dict) or not isinstance(s.get("name"), str):
            return False
        if not isinstance(s.get("description", ""), str):
            return False
        if not all(_number(s.get(k)) for k in ("queries", "long_queries")):
            return False
        # Figures a scenario may lack (no query, no true energy): null, shown as such.
        if not all(
            s.get(k) is None or _number(s.get(k)) for k in ("total_error_pct", "within_bound_pct")
        ):
            return False
        if not all(
            s.get(k) is None or _stats(s.get(k))
            for k in ("per_query_error_pct", "long_query_error_pct")
        ):
            return False
    return True


def published_accuracy(path: Path | None = None) -> dict[str, Any] | None:
    """The benchmark's figures when they describe this footprint's code, else None.

    None when the file is missing, unreadable, not valid JSON, lacks a field a report
    quotes, or was written for another version or other attribution code (its
    ``version`` or ``source_digest`` differs).
    """
    from footprint import __version__

    try:
        data = json.loads(Path(path or accuracy_path()).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not _valid(data) or data.get("version") != __version__:
        return None
    try:
        if data.get("source_digest") != source_digest():
            return None
    except OSError:
        return None
    return data
