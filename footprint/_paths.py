"""Where footprint keeps its per-user runtime files (GPU claims, sockets, loss counts)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def runtime_dir(environ: dict[str, str] | None = None) -> Path:
    """``$XDG_RUNTIME_DIR/footprint``, else ``<tempdir>/footprint-<uid>``.

    The temporary directory is read from the environment as ``tempfile`` does, without
    calling ``tempfile.gettempdir()``: its first call holds a module lock that a process
    forked meanwhile would inherit held."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_RUNTIME_DIR")
    if base:
        return Path(base) / "footprint"
    uid = os.getuid() if hasattr(os, "getuid") else 0
    temp = tempfile.tempdir or next(
        (env[k] for k in ("TMPDIR", "TEMP", "TMP") if env.get(k)), "/tmp"
    )
    return Path(temp) / f"footprint-{uid}"
