"""The per-device, per-minute ledger of energy no record carries.

Per (device UUID, UTC minute) it sums the energy measured, the idle energy, the energy
of calls never stored (lost) and the seconds measured, so that stored queries + idle +
lost = measured; each write takes its rows as ``idle_energy`` rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, NamedTuple

from footprint.attribution import DeviceResolver, EnergyPiece


class MinuteEnergy(NamedTuple):
    """The part of an energy piece inside one UTC minute."""

    minute: datetime
    energy_j: float
    seconds: float


def split_by_minute(piece: EnergyPiece, wall_offset_s: float) -> list[MinuteEnergy]:
    """Each minute the piece overlaps (``wall_offset_s`` turns its monotonic times into
    epoch seconds), with the piece's energy shared in proportion to time.

    A piece too short for epoch seconds to resolve (two samples 1e-13 s apart) lands
    whole in its start's minute: its energy is measured, never dropped."""
    start = piece.start_s + wall_offset_s
    end = piece.end_s + wall_offset_s
    if end <= start:
        minute_start = start - start % 60.0
        return [
            MinuteEnergy(
                datetime.fromtimestamp(minute_start, timezone.utc),
                piece.energy_j,
                max(piece.end_s - piece.start_s, 0.0),
            )
        ]
    out = []
    cursor = start
    while cursor < end:
        minute_start = cursor - cursor % 60.0
        stop = min(end, minute_start + 60.0)
        fraction = (stop - cursor) / (end - start)
        out.append(
            MinuteEnergy(
                datetime.fromtimestamp(minute_start, timezone.utc),
                piece.energy_j * fraction,
                stop - cursor,
            )
        )
        cursor = stop
    return out


@dataclass
class _MinuteRow:
    idle_energy_j: float = 0.0
    measured_energy_j: float = 0.0
    lost_energy_j: float = 0.0
    measured_s: float = 0.0  # the time this process measured the device


class IdleLedger:
    """Idle, measured and lost energy per device and minute, until the next write."""

    def __init__(self, wall_offset_s: float) -> None:
        self.wall_offset_s = wall_offset_s
        self._rows: dict[tuple[str, datetime], _MinuteRow] = {}

    def _row(self, uuid: str, minute: datetime) -> _MinuteRow:
        row = self._rows.get((uuid, minute))
        if row is None:
            row = self._rows[(uuid, minute)] = _MinuteRow()
        return row

    def collect(self, uuid: str, resolver: DeviceResolver) -> None:
        """Move the idle and measured pieces the resolver of device ``uuid`` produced
        into the ledger."""
        for piece in resolver.idle:
            for minute, energy_j, _ in split_by_minute(piece, self.wall_offset_s):
                self._row(uuid, minute).idle_energy_j += energy_j
        resolver.idle.clear()
        for piece in resolver.measured:
            for minute, energy_j, seconds in split_by_minute(piece, self.wall_offset_s):
                row = self._row(uuid, minute)
                row.measured_energy_j += energy_j
                row.measured_s += seconds
        resolver.measured.clear()

    def add_lost(self, uuid: str, piece: EnergyPiece) -> None:
        """Energy a device gave a call that is never stored."""
        for minute, energy_j, _ in split_by_minute(piece, self.wall_offset_s):
            self._row(uuid, minute).lost_energy_j += energy_j

    def take_rows(self, host: str, pid: int) -> list[dict[str, Any]]:
        """The ``idle_energy`` rows summed since the last call, in the order their
        device and minute were first met; the ledger starts again empty."""
        rows = [
            {
                "device_uuid": uuid,
                "minute": minute,
                "idle_energy_j": row.idle_energy_j,
                "measured_energy_j": row.measured_energy_j,
                "lost_energy_j": row.lost_energy_j,
                "measured_s": row.measured_s,
                "host": host,
                "pid": pid,
            }
            for (uuid, minute), row in self._rows.items()
        ]
        self._rows.clear()
        return rows
