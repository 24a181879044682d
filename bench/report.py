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
        "floor: what a run pays once, not its calls: per call the governed worker spends about 1.3x a plain "
        "one (cpu.call_ratio), but a run of 1 call costs about 3x (cpu.run1: the run's identity opened and "
        "closed). Opening verifies the person's signed start against Vault's identity store (the entity, then "
        "one read per group it is in), creates the run's token and writes its record, reads and appends the "
        "ledger; closing revokes the token, deletes the record and seals the run; each is a local activity "
        "(workflow activations the plain run does not have). Would move it: one Vault request at run open "
        "(a Vault plugin endpoint creating token and record together, or group names cached, which would let "
        "a renamed group count for the cache's lifetime), open and first gate in one activity, fewer "
        "activations per run."
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
    "throughput.c1.ratio": (
        "floor: with one run in flight the run's own open and close are on the path of every run of 5 calls "
        "(phases: a governed run of 5 takes about 350 ms vs 300 ms plain, 0.86x, while each call step is "
        "1.00x); see cpu.run_ratio for what would move it."
    ),
    "throughput.c10.ratio": (
        "floor: CPU. With 10 or more runs in flight the 2 cores are saturated, and calls/s goes as the inverse "
        "of the CPU all processes spend per call: the worker's (cpu.run_ratio, about 1.8-2.1x per run), "
        "OpenBao's (about 10 vs 1 ms per run: the identity, its record, the start's verification) and "
        "PostgreSQL's (the ledger). Would move it: what moves cpu.run_ratio, and a host whose Vault and "
        "database do not share the worker's cores (production's layout)."
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
        "Vault, the gate re-evaluated and recorded, the tool activity scheduled (65 ms on an idle machine in "
        "this round, 73 ms in round 2); a loaded machine stretches every round trip."
    ),
    "history.ratio": (
        "floor: the audit reads and authenticates every ledger row of the runs (hash and row MAC) and the replay "
        "re-checks every recorded decision against the bundle: work the plain Replayer does not do. 1.20x on an "
        "idle machine; a loaded one slows the ledger reads most."
    ),
    "memory.per_cached_run_ratio": (
        "floor: a governed run's workflow state (its pending approval, the agent's spec by reference, the "
        "call history it rate-limits on) and what the worker's gate keeps per run in flight (the ledger's "
        "last 64 run views). Would move it: fewer run views kept (each about 90 KiB while a run waits)."
    ),
    "ledger.verify.peak_rss_mib": (
        "floor: the imports. `lockgate verify` of a 1-entry ledger peaks within a few MiB of the 1,000,000-entry "
        "one (reading is streamed): importing the ledger code pulls in Temporal's SDK and the agent registry "
        "through lockgate.models and the package's own exports (about 75 MiB before the first row), then "
        "SQLAlchemy's engine and the checkpoint keys. Would move it: a verify path whose imports stop at the "
        "ledger's tables and hashing (lazy package exports, models split from the Temporal-facing ones)."
    ),
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
