"""The HTML report of ``expman compare --html``: one self-contained file.

Rendered with Jinja2 (autoescaped) from ``templates/_report/compare.html.j2``;
metric curves are inline SVG drawn here, so the report needs no network, no
script and no other file, and prints as it shows.
"""

from __future__ import annotations

import errno
import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from typing import Any

from expman._errors import WriteError
from expman._version import __version__
from expman.checkpoints._durable import write_text_atomically
from expman.experiments._runtime import read_events
from expman.review._compare import Comparison

__all__ = [
    "metric_series",
    "param_scatters",
    "render_report",
    "svg_chart",
    "svg_scatter",
    "write_report",
]

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
Series = dict[str, list[tuple[int, float]]]


def metric_series(checkpoint_dirs: Mapping[str, Path]) -> dict[str, Series]:
    """``{metric: {variant: [(step, value), ...]}}`` from each variant's event log."""
    curves: dict[str, Series] = {}
    for label, directory in checkpoint_dirs.items():
        for event in read_events(directory):
            for metric, value in event.get("metrics", {}).items():
                curves.setdefault(metric, {}).setdefault(label, []).append(
                    (int(event["step"]), float(value))
                )
    return curves


@dataclass(frozen=True)
class _Frame:
    """A chart's scales and axes: data coordinates to SVG coordinates."""

    width: int
    height: int
    bottom: int
    x0: float
    x1: float
    y0: float
    y1: float
    left: int = 56
    right: int = 12
    top: int = 10

    def x(self, value: float) -> float:
        return self.left + (value - self.x0) / (self.x1 - self.x0) * (
            self.width - self.left - self.right
        )

    def y(self, value: float) -> float:
        return self.top + (1 - (value - self.y0) / (self.y1 - self.y0)) * (
            self.height - self.top - self.bottom
        )

    def opening(self, x_first: str, x_last: str) -> list[str]:
        """The ``<svg>`` tag, the plot's box, and the labels of both axes' ends."""
        width, height, left, right, top = self.width, self.height, self.left, self.right, self.top
        baseline = height - self.bottom + 20
        return [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img">',
            f'<rect x="{left}" y="{top}" width="{width - left - right}" '
            f'height="{height - top - self.bottom}" fill="none" stroke="#ccc"/>',
            f'<text x="{left - 4}" y="{top + 4}" text-anchor="end" font-size="11">'
            f"{self.y1:.4g}</text>",
            f'<text x="{left - 4}" y="{height - self.bottom}" text-anchor="end" '
            f'font-size="11">{self.y0:.4g}</text>',
            f'<text x="{left}" y="{baseline}" font-size="11">{x_first}</text>',
            f'<text x="{width - right}" y="{baseline}" text-anchor="end" font-size="11">'
            f"{x_last}</text>",
        ]


def _frame(
    xs: Sequence[float], ys: Sequence[float], *, width: int, height: int, bottom: int
) -> _Frame:
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:  # a constant value: centre it
        pad = abs(y0) * 0.1 or 1.0
        y0, y1 = y0 - pad, y1 + pad
    return _Frame(width, height, bottom, x0, x1, y0, y1)


def svg_chart(series: Series, labels: Sequence[str], *, width: int = 520, height: int = 260) -> str:
    """A line chart of each variant's values over steps, as inline SVG."""
    points = [p for values in series.values() for p in values if p[1] == p[1]]  # drop NaN
    if not points:
        return ""
    frame = _frame(
        [p[0] for p in points], [p[1] for p in points], width=width, height=height, bottom=28
    )
    parts = frame.opening(f"{frame.x0}", f"step {frame.x1}")
    for index, label in enumerate(labels):
        values = sorted(p for p in series.get(label, []) if p[1] == p[1])
        if not values:
            continue
        colour = COLOURS[index % len(COLOURS)]
        coordinates = " ".join(f"{frame.x(s):.1f},{frame.y(v):.1f}" for s, v in values)
        parts.append(
            f'<polyline data-variant="{html.escape(label)}" points="{coordinates}" '
            f'fill="none" stroke="{colour}" stroke-width="2"/>'
        )
        if len(values) <= 20:  # few points: show each one
            parts += [
                f'<circle cx="{frame.x(s):.1f}" cy="{frame.y(v):.1f}" r="3" fill="{colour}"/>'
                for s, v in values
            ]
    parts.append("</svg>")
    return "".join(parts)


def svg_scatter(
    points: Sequence[tuple[str, float, float]],
    *,
    x_label: str,
    y_label: str,
    colours: Mapping[str, str],
    width: int = 360,
    height: int = 240,
) -> str:
    """A parameter (x) against a metric (y), one dot per variant, as inline SVG."""
    frame = _frame(
        [p[1] for p in points], [p[2] for p in points], width=width, height=height, bottom=30
    )
    parts = frame.opening(f"{frame.x0:.4g}", f"{html.escape(x_label)} {frame.x1:.4g}")
    for label, px, py in points:
        parts.append(
            f'<circle data-variant="{html.escape(label)}" cx="{frame.x(px):.1f}" '
            f'cy="{frame.y(py):.1f}" r="4" fill="{colours[label]}"><title>'
            f"{html.escape(label)}: {html.escape(x_label)} {px:.4g}, "
            f"{html.escape(y_label)} {py:.4g}</title></circle>"
        )
    parts.append("</svg>")
    return "".join(parts)


def param_scatters(comparison: Comparison, colours: Mapping[str, str]) -> list[dict[str, str]]:
    """Each differing numeric parameter against each metric's final value (a sweep's view)."""
    labels = [v.label for v in comparison.variants]
    data = comparison.to_json()
    scatters = []
    for key in comparison.params_differing:
        values = comparison.params[key]
        for metric, entry in data["metrics"].items():
            points = [
                (label, float(value), float(final))
                for label, value, final in zip(labels, values, entry["final"], strict=True)
                if _is_number(value) and _is_number(final) and final == final
            ]
            if len(points) >= 2:
                svg = svg_scatter(points, x_label=key, y_label=metric, colours=colours)
                scatters.append({"param": key, "metric": metric, "svg": svg})
    return scatters


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def render_report(
    comparison: Comparison,
    *,
    workspace: Path,
    checkpoint_dirs: Mapping[str, Path],
    all_params: bool = False,
) -> str:
    import jinja2

    data = comparison.to_json(all_params=all_params)
    labels = [v["label"] for v in data["variants"]]
    curves = metric_series(checkpoint_dirs)
    charts = [
        {
            "metric": metric,
            "svg": svg_chart(curves[metric], labels),
            "legend": [
                (label, COLOURS[i % len(COLOURS)])
                for i, label in enumerate(labels)
                if label in curves[metric]
            ],
        }
        for metric in sorted(curves)
    ]
    source = (files("expman.templates") / "_report" / "compare.html.j2").read_text("utf-8")
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    environment.policies["json.dumps_kwargs"] = {"sort_keys": True}
    return environment.from_string(source).render(
        version=__version__,
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        workspace=str(workspace),
        labels=labels,
        variants=data["variants"],
        params=data["params"],
        all_params=all_params,
        metrics=data["metrics"],
        charts=[c for c in charts if c["svg"]],
        scatters=param_scatters(
            comparison, {label: COLOURS[i % len(COLOURS)] for i, label in enumerate(labels)}
        ),
        architecture=data["architecture"],
        code=data["code"],
        number=_number,
    )


def write_report(path: Path, text: str) -> None:
    """Write the report whole or not at all; :class:`WriteError` says why not."""
    if path.is_dir():
        raise WriteError(
            f"cannot write {path}: it is a directory: give a file name, e.g. {path / 'report.html'}"
        )
    try:
        write_text_atomically(path, text)
    except OSError as error:
        raise WriteError(f"cannot write {path}: {_why_not(path, error)}") from error


def _why_not(path: Path, error: OSError) -> str:
    if isinstance(error, FileNotFoundError):
        return f"directory {path.parent} does not exist: create it or choose another path"
    if isinstance(error, NotADirectoryError):
        return f"{path.parent} is not a directory: choose another path"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on the device: free some space and retry"
    if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return "the directory is not writable: fix its permissions or choose another path"
    return f"{error.strerror or error}"


def _number(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else json.dumps(value)
