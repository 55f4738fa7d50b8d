"""Figures collected per server, their medians, the ratio table and its JSON."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["Figures", "print_table", "ratio"]


@dataclass
class _Figure:
    unit: str
    lower_is_better: bool
    values: dict[str, list[float]] = field(default_factory=dict)

    def median(self, server: str) -> float | None:
        values = self.values.get(server)
        return statistics.median(values) if values else None


def ratio(ours: float | None, theirs: float | None, lower_is_better: bool) -> float | None:
    """dicomvault relative to Orthanc, oriented so that > 1 means dicomvault is better."""
    if ours is None or theirs is None or not (ours > 0 and theirs > 0):
        return None
    if math.isnan(ours) or math.isnan(theirs):
        return None
    return theirs / ours if lower_is_better else ours / theirs


class Figures:
    """Every measurement by label and server; several rounds keep their median."""

    def __init__(self) -> None:
        self._figures: dict[str, _Figure] = {}

    def add(
        self, label: str, server: str, value: float, unit: str, *, lower_is_better: bool = False
    ) -> None:
        figure = self._figures.setdefault(label, _Figure(unit, lower_is_better))
        figure.values.setdefault(server, []).append(value)

    def rows(self) -> list[tuple[str, str, float | None, float | None, float | None]]:
        out = []
        for label, figure in self._figures.items():
            ours, theirs = figure.median("dicomvault"), figure.median("orthanc")
            out.append(
                (label, figure.unit, ours, theirs, ratio(ours, theirs, figure.lower_is_better))
            )
        return out

    def as_json(self) -> list[dict[str, Any]]:
        return [
            {
                "figure": label,
                "unit": unit,
                "dicomvault": ours,
                "orthanc": theirs,
                "ratio": r,
                "runs": self._figures[label].values,
            }
            for label, unit, ours, theirs, r in self.rows()
        ]


def _cell(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def print_table(figures: Figures, disk: dict[str, float] | None, storescu: str) -> None:
    table = Table(title="dicomvault / Orthanc (ratio > 1: dicomvault is better)")
    for name in ("figure", "unit", "dicomvault", "Orthanc", "ratio"):
        table.add_column(name, justify="left" if name == "figure" else "right")
    for label, unit, ours, theirs, r in figures.rows():
        table.add_row(label, unit, _cell(ours), _cell(theirs), f"{r:.2f}" if r else "n/a")
    console = Console()
    console.print(table)
    if disk:
        console.print(
            f"disk sequential: write {disk['write_mb_per_s']:.0f} MB/s (fsync), "
            f"read {disk['read_mb_per_s']:.0f} MB/s (page cache dropped)"
        )
    console.print(f"C-STORE client: {storescu} with TCP_NODELAY=1")
