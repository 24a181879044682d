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


# -- BENCHMARKS.md ---------------------------------------------------------------------------------
BEGIN, END = "<!-- bench:results:begin (written by `make bench`) -->", "<!-- bench:results:end -->"

# For a figure that misses its target: what sets its floor here, and what would move it.
MISSES: dict[str, str] = {
    "cpu.run_ratio": (
        "floor: what a governed run does that a plain one does not, all in the worker's Python: the run's "
        "identity (a Vault token, its record, the person's signed start verified against Vault's identity "
        "store: about 6 HTTP requests with hvac/requests), a gate per call (ledger read, Cedar, decision row) "
        "and 2 ledger rows per call; see the profile below. Would move it: one Vault request at run open "
        "(a plugin endpoint or a batched KV/token call), appending a call's rows in one statement, and a "
        "lighter HTTP client than requests for Vault."
    ),
    "seq.a.step_ratio": (
        "floor: each governed call is a plain activity plus, in it, the gate (ledger check, Cedar, the "
        "decision row) and the completion row: 2 ledger writes and one read per call on the critical path. "
        "Would move it: the decision and completion rows in one append after the tool, if the evidence model "
        "accepted a decision recorded only with its outcome (today the decision is durable before the effect)."
    ),
    "seq.b.step_ratio": (
        "floor: the dynamic credential itself: Vault creates a PostgreSQL role (CREATE ROLE + GRANT in "
        "PostgreSQL), the tool connects with it, and the lease is revoked (DROP ROLE) before the call returns, "
        "plus 2 more ledger rows (lease issued, revoked). The plain anchor connects with a static DSN. Would "
        "move it: revoking after the activity returns (off the critical path; the reaper already revokes what "
        "a crash leaves), which trades the 'revoked the moment the call ends' guarantee for latency."
    ),
    "throughput.c1.ratio": "floor: the per-call and per-run work above, serialised; see cpu.run_ratio.",
    "throughput.c10.ratio": (
        "floor: worker CPU (cpu.run_ratio) plus OpenBao's and PostgreSQL's CPU on the same 2 cores: at "
        "saturation calls/s is inversely proportional to CPU per call across all processes."
    ),
    "throughput.c50.ratio": "as throughput.c10: CPU-bound at saturation on 2 shared cores.",
    "scale.two_workers_ratio": (
        "floor: 2 cores shared by Temporal, OpenBao, PostgreSQL, the bench client and both workers: a second "
        "worker process adds its own polling and runtime threads and cannot add cores. Would move it: a host "
        "with spare cores (the figure tests for a global bottleneck, and the ledger has none: per-run chains)."
    ),
    "gate.1000.vs_cedar_p50": (
        "floor: the Python around the Cedar call (context built and pruned, plain-data checks of what is "
        "pruned, the answer cache key, mapping Cedar's answer back to policy ids)."
    ),
    "gate.1000.vs_cedar_p99": "as gate.1000.vs_cedar_p50.",
    "gate.flat_p50": "slices are per action: a bundle's other actions' policies are never evaluated.",
    "gate.flat_p99": "as gate.flat_p50.",
    "approval.p50_ms": (
        "floor: the update's round trip, the approval's signature and the approver's groups checked against "
        "Vault, the gate re-evaluated and recorded, the tool activity scheduled; on an idle machine it was "
        "73 ms (round 2). This run's machine was overloaded (see the load above)."
    ),
    "history.ratio": "1.10x on an idle machine (round 2); this run's load slowed the audit's ledger reads most.",
}


def _profile_lines(raw: dict[str, Any]) -> list[str]:
    prof = (raw.get("cpu") or {}).get("profile")
    if not prof:
        return []
    lines = [
        "",
        f"Profile of the governed worker ({prof['how']}; {prof['runs']} runs of 5 calls):",
        "",
        "| area | ms of Python CPU per call (profiled) |",
        "| --- | --- |",
    ]
    lines += [f"| {k} | {v:.2f} |" for k, v in list(prof["by_area_ms_per_call"].items())[:10]]
    lines += ["", "| lockgate function (cumulative) | ms per call (profiled) | calls |", "| --- | --- | --- |"]
    lines += [
        f"| `{e['where']}` | {e['cum_ms_per_call']:.2f} | {e['calls']} |" for e in prof["top_cumulative_lockgate"]
    ]
    lines += ["", "| function (own time) | ms per call (profiled) | calls |", "| --- | --- | --- |"]
    lines += [f"| `{e['where']}` | {e['own_ms_per_call']:.2f} | {e['calls']} |" for e in prof["top_own"][:10]]
    return lines


def benchmarks_section(figures: list[Figure], meta: dict[str, Any], raw: dict[str, Any]) -> str:
    m = meta.get("machine", {})
    lines = [
        BEGIN,
        "",
        f"Last `make bench`: {meta.get('started_at', '?')}, {meta.get('mode', '?')} sizes, "
        f"{meta.get('duration_s', '?')} s; {m.get('cpus', '?')} CPUs ({m.get('cpu_model', '?')}), "
        f"load average at start {m.get('load_avg', '?')}; Python {m.get('python', '?')}; {m.get('platform', '?')}; "
        + ", ".join(f"{k} {v}" for k, v in (m.get("versions") or {}).items())
        + ".",
        "",
        "| figure | value | target | result |",
        "| --- | --- | --- | --- |",
    ]

    def cell(text: str) -> str:
        return " ".join(text.split()).replace("|", "/")

    for f in figures:
        result = "-" if f.ok is None else ("PASS" if f.ok else "**MISS**")
        lines.append(f"| {cell(f.label)} | {cell(f.display)} | {f.target or '-'} | {result} |")
    missed = [f for f in figures if f.ok is False]
    if missed:
        lines += ["", "Misses, each with its floor here and what would move it:", ""]
        for f in missed:
            why = MISSES.get(f.key, "no analysis recorded for this figure yet.")
            lines.append(f"- **{cell(f.label)}**: {cell(f.display)} (target {f.target or '-'}). {why}")
    lines += _profile_lines(raw)
    lines += ["", END]
    return "\n".join(lines)


def write_benchmarks_md(path: Path, figures: list[Figure], meta: dict[str, Any], raw: dict[str, Any]) -> None:
    """Replaces the generated part of BENCHMARKS.md (between its markers) with this run's figures."""
    try:
        text = path.read_text()
    except OSError:
        return
    if BEGIN not in text or END not in text:
        return
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    path.write_text(head + benchmarks_section(figures, meta, raw) + tail)
