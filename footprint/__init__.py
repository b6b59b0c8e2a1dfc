"""footprint: what each inference query costs in energy, CO2e and money.

    import footprint

    @footprint.track(model="llama-3-8b")
    def generate(prompt): ...

One record per call lands in SQLite (``FOOTPRINT_DB``, default ``footprint.db``).
"""

from footprint.runtime.spans import FootprintWarning
from footprint.tracking import (
    Query,
    Tracker,
    configure,
    flush,
    query,
    reset_configuration,
    shutdown,
    stats,
    track,
)

__version__ = "0.1.0"

__all__ = [
    "FootprintWarning",
    "Query",
    "Tracker",
    "__version__",
    "configure",
    "flush",
    "query",
    "reset_configuration",
    "shutdown",
    "stats",
    "track",
]
