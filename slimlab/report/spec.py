"""Figures as plain data, drawn the same by the HTML (plotly) and the PNG (matplotlib) renderers."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Series:
    """Points or a line. `labels` are drawn beside the points; `hover` is shown on pointing (HTML only)."""

    name: str
    x: list
    y: list
    mode: str = "markers"  # markers | lines | lines+markers | bar
    labels: list[str] | None = None
    hover: list[str] | None = None
    error_y: list[float] | None = None
    color: str | None = None
    symbol: str = "circle"  # circle | circle-open | star | diamond | x
    dash: str = "solid"  # solid | dash | dot
    width: float = 2.0
    opacity: float = 1.0


@dataclass(frozen=True)
class Chart:
    """An x-y figure. `subtitle` names the data set and the device; `note` is a sentence shown under it."""

    key: str
    title: str
    subtitle: str
    x_title: str
    y_title: str
    series: list[Series]
    note: str = ""


@dataclass(frozen=True)
class Dimension:
    """An axis of a parallel-coordinates figure; `ticks` name the codes of a categorical axis."""

    label: str
    values: list[float]
    ticks: dict[float, str] | None = None


@dataclass(frozen=True)
class Parallel:
    key: str
    title: str
    subtitle: str
    dimensions: list[Dimension]
    color: list[float]
    color_title: str
    note: str = ""


@dataclass(frozen=True)
class Skipped:
    """A figure the store has no data for, and the sentence that says why."""

    key: str
    title: str
    reason: str


Figure = Chart | Parallel


@dataclass
class Figures:
    drawn: list[Figure] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def add(self, item: Figure | Skipped | list) -> None:
        for one in item if isinstance(item, list) else [item]:
            (self.skipped if isinstance(one, Skipped) else self.drawn).append(one)
