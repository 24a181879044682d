"""Figures, the printed table and bench/results.json."""

from __future__ import annotations

import json
import operator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["Figure", "figure", "info", "render_table", "write_results"]


@dataclass
class Figure:
    key: str  # stable id in results.json, e.g. "seq.a.step_ratio"
    label: str  # what the table shows
    value: float | None
    unit: str
    display: str  # the value as printed
    target: str  # e.g. "<= 1.30x"; "" for figures shown for context only
    ok: bool | None  # None: no target (context), or not measured
    note: str = ""


_OPS = {"<=": operator.le, ">=": operator.ge}
_KEPT = ("cli",)


def figure(
    key: str,
    label: str,
    value: float | None,
    unit: str,
    op: str,
    limit: float,
    *,
    fmt: str = "{:.2f}",
    note: str = "",
    display: str | None = None,
) -> Figure:
    """A figure with a target: passes when `value op limit`."""
    shown = display if display is not None else ("n/a" if value is None else fmt.format(value) + unit)
    target = f"{op} {fmt.format(limit)}{unit}"
    ok = None if value is None else bool(_OPS[op](value, limit))
    return Figure(key, label, value, unit, shown, target, ok, note)


def info(
    key: str,
    label: str,
    value: float | None,
    unit: str,
    *,
    fmt: str = "{:.2f}",
    note: str = "",
    display: str | None = None,
) -> Figure:
    """A figure shown for context, without a target of its own."""
    shown = display if display is not None else ("n/a" if value is None else fmt.format(value) + unit)
    return Figure(key, label, value, unit, shown, "", None, note)


def render_table(figures: list[Figure]) -> str:
    rows = [("figure", "value", "target", "result")]
    for f in figures:
        result = "-" if f.ok is None else ("PASS" if f.ok else "FAIL")
        rows.append((f.label, f.display, f.target or "-", result))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for n, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_results(path: Path, figures: list[Figure], meta: dict[str, Any], raw: dict[str, Any]) -> None:
    doc = {
        "schema": "lockgate.bench/v1",
        **meta,
        "summary": {
            "passed": sum(1 for f in figures if f.ok is True),
            "failed": sum(1 for f in figures if f.ok is False),
            "failed_figures": [f.key for f in figures if f.ok is False],
        },
        "figures": [asdict(f) for f in figures],
        "raw": raw,
    }
    # Figures other entries record there (`make bench-cli`: "cli") stay.
    try:
        kept = {k: v for k, v in json.loads(path.read_text()).items() if k in _KEPT}
    except (OSError, ValueError):
        kept = {}
    path.write_text(json.dumps({**doc, **kept}, indent=2, default=str) + "\n")
