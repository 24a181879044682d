"""`make mutation`: mutation testing of the code that decides and enforces, module by module.

Mutants are Cosmic Ray's (its core operators, a subset that twists a decision: comparisons, boolean
operators, negations, constants, exception types, loops) plus lockgate's own that switch a control
off (mutation/operators.py: a check that never fires, an effect call dropped, a bound field dropped).
Cosmic Ray's mutation engine rewrites the file on disk, one mutant at a time, in a private copy of
the repository (a lane), and the module's own tests run there as a fresh pytest process: nothing
in-process to confuse Temporal's workflow sandbox or the in-process workers of real-stack tests.
Each lane keeps one stack of servers (`mutation/stack.py`, restarted every 20 sessions) that its
sessions share, each with its own task queue, worker and ledger (`--own-stacks`: a stack per session).

What is mutated, and which tests guard it, is in mutation/targets.toml (whole small modules, or
named functions of big I/O modules). A mutant survives when its module's tests all pass; a survivor
listed in mutation/equivalents.toml (with a one-line reason) is equivalent and leaves the score.
Score = killed / (mutants - equivalent). Results go to bench/mutation.json.

Outcomes are kept in bench/mutation.json by each mutant's stable description (file, function,
operator, source line, #n when repeated) with a fingerprint of what it was measured against (the
target file and its test files): a run redoes only the mutants whose fingerprint changed or that have
no outcome yet, and merges the rest, so a partial run never drops a module's earlier outcomes.

    python -m mutation                 # every target; exit 1 below 90% or with an unlisted survivor
    python -m mutation --fresh         # every mutant again, nothing reused (the measured full run)
    python -m mutation --only approvals,gates.engine
    python -m mutation --survivors     # again only what survived last time (the rest kept as stored)
    python -m mutation --keys FILE     # again only these descriptions (the rest kept as stored)
    python -m mutation --list          # the mutants, not run
    python -m mutation --report        # the table of the stored outcomes, nothing run
"""

from __future__ import annotations

import argparse
import ast
import fcntl
import hashlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cosmic_ray.plugins
from cosmic_ray.ast import ast_nodes, get_ast
from cosmic_ray.mutating import MutationVisitor

from mutation.operators import OPERATORS

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ROOT / "mutation" / "targets.toml"
EQUIVALENTS = ROOT / "mutation" / "equivalents.toml"
RESULTS = ROOT / "bench" / "mutation.json"
THRESHOLD = 90.0

cosmic_ray.plugins.OPERATOR_PROVIDERS.setdefault("lockgate", OPERATORS)

# Cosmic Ray's core operators that are run: one mutant per decision twist, not every operator
# replaced by every other (`a + b` -> `a ** b`, `a < b` -> `a is b` add time, not insight). Left out:
# AddNot (an inverted check also refuses the allowed path, so any happy-path test kills it; the mutant
# that matters, a check that never fires, is DisableCheck) and NumberReplacer (nearly all of its
# mutants are slice bounds of messages and ids; the limits that decide are named constants elsewhere).
CORE = (
    "ReplaceComparisonOperator_Eq_NotEq",
    "ReplaceComparisonOperator_NotEq_Eq",
    "ReplaceComparisonOperator_Lt_LtE",
    "ReplaceComparisonOperator_LtE_Lt",
    "ReplaceComparisonOperator_Gt_GtE",
    "ReplaceComparisonOperator_GtE_Gt",
    "ReplaceComparisonOperator_Is_IsNot",
    "ReplaceComparisonOperator_IsNot_Is",
    "ReplaceBinaryOperator_Add_Sub",
    "ReplaceBinaryOperator_Sub_Add",
    "ReplaceBinaryOperator_BitOr_BitAnd",
    "ReplaceBinaryOperator_BitAnd_BitOr",
    "ReplaceUnaryOperator_Delete_Not",
    "ReplaceUnaryOperator_USub_UAdd",
    "ReplaceTrueWithFalse",
    "ReplaceFalseWithTrue",
    "ReplaceAndWithOr",
    "ReplaceOrWithAnd",
    "ReplaceBreakWithContinue",
    "ReplaceContinueWithBreak",
    "ExceptionReplacer",
    "ZeroIterationForLoop",
)
OPERATOR_NAMES = (*(f"core/{n}" for n in CORE), *(f"lockgate/{n}" for n in OPERATORS))


@dataclass
class Target:
    name: str
    file: str
    tests: list[str]
    functions: list[str] = field(default_factory=list)
    timeout: float = 0.0


@dataclass
class Mutant:
    target: str
    file: str
    operator: str
    occurrence: int
    line: int
    scope: str
    text: str
    key: str = ""
    fingerprint: str = ""
    outcome: str = "pending"  # killed | survived | timeout | error (pending: never run)
    stale: bool = False  # a stored outcome kept although its fingerprint changed (--survivors, --keys)
    done: bool = False  # run by this run
    measured_at: str = ""  # when the outcome was measured (the latest measurement of a mutant wins)
    seconds: float = 0.0
    diff: str = ""


# -- what is mutated -------------------------------------------------------------------------------
def load_targets() -> list[Target]:
    data = tomllib.loads(TARGETS.read_text())
    return [
        Target(
            name=t["name"],
            file=t["file"],
            tests=list(t["tests"]),
            functions=list(t.get("functions", [])),
            timeout=float(t.get("timeout", 0)),
        )
        for t in data["target"]
    ]


def load_equivalents() -> dict[str, str]:
    data = tomllib.loads(EQUIVALENTS.read_text()) if EQUIVALENTS.exists() else {}
    return {str(e["mutant"]): str(e["reason"]) for e in data.get("equivalent", [])}


def _scopes(source: str) -> list[tuple[int, int, str]]:
    """(first line, last line, qualified name) of every function, innermost last."""
    out: list[tuple[int, int, str]] = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                if not isinstance(child, ast.ClassDef):
                    out.append((first, child.end_lineno or child.lineno, name))
                walk(child, name + ".")
            else:
                walk(child, prefix)

    walk(ast.parse(source), "")
    return out


def _annotations(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Spans of type annotations: never evaluated here (`from __future__ import annotations`), so a
    mutant inside one (`str | None` -> `str & None`) is equivalent by construction and not made."""
    out = []
    for node in ast.walk(ast.parse(source)):
        notes: list[ast.expr | None] = []
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            notes.append(node.returns)
        elif isinstance(node, ast.arg):
            notes.append(node.annotation)
        elif isinstance(node, ast.AnnAssign):
            notes.append(node.annotation)
        for n in notes:
            if n is not None:
                out.append(((n.lineno, n.col_offset), (n.end_lineno or n.lineno, n.end_col_offset or 0)))
    return out


def _scope_of(line: int, scopes: list[tuple[int, int, str]]) -> str:
    inside = [s for s in scopes if s[0] <= line <= s[1]]
    return max(inside, key=lambda s: s[0])[2] if inside else "<module>"


def _in_scope(scope: str, functions: list[str]) -> bool:
    return not functions or any(scope == f or scope.startswith(f + ".") for f in functions)


def fingerprint(target: Target) -> str:
    """What a mutant's outcome was measured against: the target file, its tests, their fixtures and
    the helpers they share (tests/support/)."""
    h = hashlib.sha256()
    support = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests" / "support").glob("*.py"))
    files = [target.file, "tests/conftest.py", *support, *sorted({t.split("::")[0] for t in target.tests})]
    for f in files:
        path = ROOT / f
        h.update(f.encode() + b"\0" + (path.read_bytes() if path.exists() else b"") + b"\0")
    h.update("\0".join(target.tests).encode())
    return h.hexdigest()[:16]


def mutants_of(target: Target) -> list[Mutant]:
    source = (ROOT / target.file).read_text()
    stamp = fingerprint(target)
    lines = source.splitlines()
    scopes = _scopes(source)
    notes = _annotations(source)
    module = get_ast(source)
    out: list[Mutant] = []
    for name in OPERATOR_NAMES:
        operator: Any = cosmic_ray.plugins.get_operator(name)()
        occurrence = 0
        for node in ast_nodes(module):
            for start, _end in operator.mutation_positions(node):
                line = start[0]
                scope = _scope_of(line, scopes)
                text = lines[line - 1].strip()
                annotated = any(a <= start < b for a, b in notes)
                if _in_scope(scope, target.functions) and not annotated and not text.startswith(("assert ", "log.")):
                    out.append(Mutant(target.name, target.file, name, occurrence, line, scope, text))
                occurrence += 1
    seen: dict[str, int] = {}
    for m in out:
        base = f"{m.file}::{m.scope}::{m.operator}::{m.text}"
        seen[base] = seen.get(base, 0) + 1
        m.key = base if seen[base] == 1 else f"{base}#{seen[base]}"
        m.fingerprint = stamp
    return out


# -- what was measured before ----------------------------------------------------------------------
def load_outcomes() -> dict[str, dict[str, Any]]:
    """Stored outcomes by mutant description (this format, or the per-module lists of the first one)."""
    previous: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if "outcomes" in previous:
        return dict(previous["outcomes"])
    return {
        k["key"]: {"outcome": k["outcome"], "seconds": k.get("seconds", 0.0), "fingerprint": ""}
        for r in previous.get("modules", {}).values()
        for k in r.get("_mutants", [])
    }


def restore(m: Mutant, stored: dict[str, Any]) -> None:
    m.outcome = str(stored["outcome"])
    m.seconds = float(stored.get("seconds", 0.0))
    m.diff = str(stored.get("diff", ""))
    m.stale = stored.get("fingerprint") != m.fingerprint
    m.measured_at = str(stored.get("measured_at", ""))


# -- where it runs ---------------------------------------------------------------------------------
def make_lane(base: Path, n: int) -> Path:
    """A private copy of the repository (tracked and new files, nothing ignored): mutants are
    written there, never in the working tree."""
    lane = base / f"lane{n}"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for raw in files:
        if not raw:
            continue
        rel = raw.decode()
        src, dst = ROOT / rel, lane / rel
        if src.is_symlink():
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(os.readlink(src))
        elif src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    return lane


# Interrupted (Ctrl-C): no lane takes another mutant, the test sessions running are stopped (their
# outcome is not recorded: an interrupted session says nothing of its mutant).
_STOP = threading.Event()
_RUNNING: set[subprocess.Popen[bytes]] = set()
_RUNNING_LOCK = threading.Lock()


def _interrupt_sessions() -> None:
    _STOP.set()
    with _RUNNING_LOCK:
        running = list(_RUNNING)
    for proc in running:
        try:
            os.killpg(proc.pid, signal.SIGINT)  # pytest then stops its stack
        except OSError:
            pass


class SharedStack:
    """A lane's servers (`python -m mutation.stack`), shared by its test sessions in turn, and
    started afresh every `RESTART_EVERY` sessions: what a mutant leaves behind in the servers (a
    person's token, a stray workflow) reaches a bounded number of later sessions. Each session
    still has its own task queue, worker and ledger (tests/conftest.py)."""

    RESTART_EVERY = 20

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.proc: subprocess.Popen[str] | None = None
        self.path = ""
        self.sessions = 0
        self.generation = 0

    def ensure(self) -> str:
        """The running stack's directory (for LOCKGATE_TEST_SHARED_STACK), started if need be."""
        if self.proc is not None and (self.proc.poll() is not None or self.sessions >= self.RESTART_EVERY):
            self.stop()
        if self.proc is None:
            self.generation += 1
            where = self.directory / f"g{self.generation}"
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mutation.stack", str(where)],
                cwd=ROOT,
                env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(ROOT)},
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline()  # "ready DIR", or the error and EOF
            if not line.startswith("ready "):
                rest = self.proc.stdout.read()
                self.stop()
                raise SystemExit(f"mutation: a lane's stack did not start: {line}{rest[-3000:]}")
            self.path, self.sessions = line.split(" ", 1)[1].strip(), 0
        self.sessions += 1
        return self.path

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()  # the helper stops its servers
            proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        _stop_servers_under(self.directory)
        shutil.rmtree(self.directory / f"g{self.generation}", ignore_errors=True)


def run_tests(lane: Path, tests: list[str], timeout: float, shared: str = "") -> tuple[str, float, str]:
    """The tests in a fresh pytest process in `lane` (on the lane's shared stack if given):
    ("passed" | "failed" | "timeout", seconds, output)."""
    basetemp = Path(tempfile.mkdtemp(prefix="pt-", dir=lane.parent))
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(lane)}
    if shared:
        env["LOCKGATE_TEST_SHARED_STACK"] = shared
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--basetemp", str(basetemp), *tests]
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=lane, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    with _RUNNING_LOCK:
        _RUNNING.add(proc)
    try:
        out, _ = proc.communicate(timeout=timeout or None)
        status = "passed" if proc.returncode == 0 else "failed"
    except subprocess.TimeoutExpired:
        # Interrupt first: pytest then stops the session's stack (its servers run in their own sessions).
        os.killpg(proc.pid, signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        status = "timeout"
    finally:
        with _RUNNING_LOCK:
            _RUNNING.discard(proc)
    _stop_servers_under(basetemp)
    shutil.rmtree(basetemp, ignore_errors=True)
    return status, time.monotonic() - started, out.decode(errors="replace")


def _stop_servers_under(directory: Path) -> None:
    """Kills what the tests' stack left running: a session that timed out (a mutant that hangs a
    run) may be killed before its fixtures stop the servers, which run in their own sessions.
    Every server of the stack keeps its state under the session's basetemp: it is named on its
    command line or is its working directory."""
    mark = str(directory)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if mark in cmdline or cwd.startswith(mark):
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except OSError:
                pass


def mutate(lane: Path, m: Mutant) -> tuple[str, str] | None:
    """Writes the mutant into the lane's copy; returns (original, mutated) or None if it no longer applies."""
    path = lane / m.file
    original = path.read_text()
    operator = cosmic_ray.plugins.get_operator(m.operator)()
    mutated = MutationVisitor.mutate_code(original, operator, m.occurrence)
    if mutated is None or mutated == original:
        return None
    path.write_text(mutated)
    return original, mutated


def _diff(original: str, mutated: str) -> str:
    a, b = original.splitlines(), mutated.splitlines()
    return "\n".join(
        [f"- {x.strip()}" for x, y in zip(a, b, strict=False) if x != y][:3]
        + [f"+ {y.strip()}" for x, y in zip(a, b, strict=False) if x != y][:3]
    )


# -- the run ---------------------------------------------------------------------------------------
def _print(*parts: Any) -> None:
    print(*parts, flush=True)


def run(
    targets: list[Target], mutants: list[Mutant], jobs: int, saved: Callable[[], object], *, shared: bool = True
) -> dict[str, float]:
    base = Path(tempfile.mkdtemp(prefix="lockgate-mutation-"))
    base.chmod(0o755)  # embedded PostgreSQL runs as its own user when the runner is root
    stacks: dict[Path, SharedStack] = {}
    try:
        lanes = [make_lane(base, n) for n in range(jobs)]
        if shared:
            stacks = {lane: SharedStack(base / f"{lane.name}-stack") for lane in lanes}

        def stack_of(lane: Path) -> str:
            return stacks[lane].ensure() if shared else ""

        baseline: dict[str, float] = {}
        by_name = {t.name: t for t in targets}
        names = sorted({m.target for m in mutants})
        # The unmutated tests must pass (they are what a survivor is measured against), and their
        # time sets the mutants' timeout.
        # The baselines run side by side, one per lane.
        todo: queue.Queue[str] = queue.Queue()
        for name in names:
            todo.put(name)
        failures: list[tuple[str, str, str]] = []

        def baseline_loop(lane: Path) -> None:
            while not _STOP.is_set():
                try:
                    name = todo.get_nowait()
                except queue.Empty:
                    return
                t = by_name[name]
                status, seconds, out = run_tests(lane, t.tests, 900, stack_of(lane))
                if status != "passed":
                    failures.append((name, status, out))
                    continue
                baseline[name] = seconds
                _print(f"baseline {name}: {len(t.tests)} test paths pass in {seconds:.1f}s")

        checks = [threading.Thread(target=baseline_loop, args=(lane,)) for lane in lanes]
        for th in checks:
            th.start()
        for th in checks:
            th.join()
        # A target whose tests fail unmutated measures nothing: its mutants stay not run (the
        # report says so) and the others go on.
        broken = set()
        for name, status, out in failures:
            _print(out[-4000:])
            _print(f"mutation: the tests of {name} fail without any mutant ({status}): its mutants are not run")
            broken.add(name)
        mutants = [m for m in mutants if m.target not in broken]
        work: queue.Queue[Mutant] = queue.Queue()
        for m in mutants:
            work.put(m)
        done = [0]
        lock = threading.Lock()
        total = len(mutants)
        started = time.monotonic()

        def lane_loop(lane: Path) -> None:
            while not _STOP.is_set():
                try:
                    m = work.get_nowait()
                except queue.Empty:
                    return
                t = by_name[m.target]
                seconds, diff = 0.0, "mutation no longer applies"
                try:
                    applied = mutate(lane, m)
                except Exception as err:  # noqa: BLE001 - Cosmic Ray cannot make some (a dotted exception name)
                    applied, diff = None, f"Cosmic Ray cannot make this mutant: {type(err).__name__}: {err}"
                if applied is None:
                    outcome = "error"
                else:
                    try:
                        timeout = t.timeout or baseline[m.target] * 3 + 30
                        status, seconds, _ = run_tests(lane, t.tests, timeout, stack_of(lane))
                    finally:
                        (lane / m.file).write_text(applied[0])
                    if status == "timeout" and shared:
                        # A session stopped mid-test may leave the servers as no test expects (a
                        # half-configured auth mount): the next session gets a fresh stack.
                        stacks[lane].stop()
                    if _STOP.is_set():
                        return
                    outcome = {"passed": "survived", "failed": "killed"}.get(status, status)
                    diff = _diff(*applied)
                with lock:
                    m.outcome, m.seconds, m.diff, m.stale, m.done = outcome, seconds, diff, False, True
                    m.measured_at = datetime.now(UTC).isoformat(timespec="seconds")
                    done[0] += 1
                    eta = (time.monotonic() - started) / done[0] * (total - done[0])
                    mark = "SURVIVED" if m.outcome == "survived" else m.outcome
                    _print(f"[{done[0]}/{total} eta {eta / 60:.0f}m] {m.target} {mark:8} {m.seconds:5.1f}s {m.key}")
                    saved()  # after every mutant: an interrupted run keeps what it measured

        threads = [threading.Thread(target=lane_loop, args=(lane,)) for lane in lanes]
        for th in threads:
            th.start()
        try:
            while any(th.is_alive() for th in threads):
                time.sleep(0.5)
        except KeyboardInterrupt:
            _print("\ninterrupted: stopping the test sessions running (their mutants are not recorded)")
            _interrupt_sessions()
            for th in threads:
                th.join()
            raise
        return baseline
    finally:
        for stack in stacks.values():
            stack.stop()
        shutil.rmtree(base, ignore_errors=True)


def summarize(targets: list[Target], mutants: list[Mutant], equivalents: dict[str, str]) -> dict[str, Any]:
    modules: dict[str, Any] = {}
    for t in targets:
        mine = [m for m in mutants if m.target == t.name]
        if not mine:
            continue
        killed = [m for m in mine if m.outcome in ("killed", "timeout")]
        survived = [m for m in mine if m.outcome == "survived" and m.key not in equivalents]
        equivalent = [m for m in mine if m.outcome == "survived" and m.key in equivalents]
        errors = [m for m in mine if m.outcome == "error"]
        pending = [m for m in mine if m.outcome == "pending"]
        counted = len(mine) - len(equivalent) - len(errors) - len(pending)
        modules[t.name] = {
            "file": t.file,
            "scope": t.functions or "whole module",
            "tests": t.tests,
            "mutants": len(mine),
            "killed": len(killed),
            "survived": len(survived),
            "equivalent": len(equivalent),
            "not_applicable": len(errors),
            "not_run": len(pending),
            "stale": sum(m.stale for m in mine),
            "score": round(100.0 * len(killed) / counted, 1) if counted else None,  # None: nothing measured
            "mutant_seconds": round(sum(m.seconds for m in mine)),
            "survivors": [{"mutant": m.key, "line": m.line, "diff": m.diff} for m in survived],
            "equivalents": [{"mutant": m.key, "reason": equivalents[m.key]} for m in equivalent],
            "killed_by_equivalent_listing": [m.key for m in killed if m.key in equivalents],
        }
    return modules


def report(modules: dict[str, Any]) -> bool:
    ok = True
    _print("\nmutation score per module (killed / (mutants - equivalent)):")
    for name, r in modules.items():
        measured = r["score"] is not None
        score = f"{r['score']:5.1f}%" if measured else "   -- "
        flag = "ok " if measured and r["score"] >= THRESHOLD and not r["survivors"] and not r["not_run"] else "LOW"
        ok = ok and flag == "ok "
        extra = "".join(
            [
                f"  {r['not_applicable']} n/a" if r["not_applicable"] else "",
                f"  {r['not_run']} NOT RUN" if r["not_run"] else "",
                f"  ({r['stale']} kept from before their code or tests changed)" if r["stale"] else "",
            ]
        )
        _print(
            f"  {flag} {name:22} {score}  {r['killed']:3} killed  {r['survived']:2} survived  "
            f"{r['equivalent']:2} equivalent  of {r['mutants']:3}  {r['mutant_seconds'] / 60:5.1f} min{extra}"
        )
        for s in r["survivors"]:
            _print(f"        survivor: {s['mutant']}  (line {s['line']})")
        for e in r["equivalents"]:
            _print(f"        equivalent: {e['mutant']}\n            reason: {e['reason']}")
        for k in r["killed_by_equivalent_listing"]:
            _print(f"        listed as equivalent but killed (drop it from equivalents.toml): {k}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mutation", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated target names")
    parser.add_argument("--fresh", action="store_true", help="run every selected mutant, reuse no stored outcome")
    parser.add_argument("--survivors", action="store_true", help="only the mutants that survived last time")
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    parser.add_argument("--report", action="store_true", help="print the table of the stored outcomes, run nothing")
    parser.add_argument("--keys", default="", help="a file of mutant descriptions, one a line: only those")
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("MUTATION_JOBS", "2")))
    parser.add_argument(
        "--own-stacks", action="store_true", help="each test session starts its own servers (no lane stack)"
    )
    args = parser.parse_args(argv)
    # Stopped as by Ctrl-C when terminated too (a background job ignores SIGINT).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    targets = load_targets()
    shown = targets
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {t.name for t in targets}
        if unknown:
            parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
        shown = [t for t in targets if t.name in wanted]
    mutants = [m for t in targets for m in mutants_of(t)]
    if args.list:
        for m in mutants:
            if m.target in {t.name for t in shown}:
                _print(f"{m.target:22} {m.line:4} {m.key}")
        counts: dict[str, int] = {}
        for m in mutants:
            counts[m.target] = counts.get(m.target, 0) + 1
        _print(counts, sum(counts.values()))
        return 0
    stored = load_outcomes()
    for m in mutants:
        if m.key in stored:
            restore(m, stored[m.key])
    names = {t.name for t in shown}
    if args.report:  # the summary in bench/mutation.json is brought up to date too (equivalents edited since)
        modules = summarize(targets, mutants, load_equivalents())
        if RESULTS.exists():
            with open(Path(tempfile.gettempdir()) / "lockgate-mutation-results.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                RESULTS.write_text(json.dumps({**json.loads(RESULTS.read_text()), "modules": modules}, indent=1) + "\n")
        return 0 if report({k: v for k, v in modules.items() if k in names}) else 1
    selected = [m for m in mutants if m.target in names]
    if args.keys:
        keys = set(Path(args.keys).read_text().splitlines())
        selected = [m for m in selected if m.key in keys]
    elif args.survivors:
        selected = [m for m in selected if m.outcome in ("survived", "pending", "error")]
    elif not args.fresh:
        # Only what changed: no outcome yet, or measured against another version of code or tests.
        selected = [m for m in selected if m.outcome == "pending" or m.stale]
    if args.only:  # in the order named: the ones that matter most first, in case the run is cut short
        order = args.only.split(",")
        selected.sort(key=lambda m: order.index(m.target))
    reused = len([m for m in mutants if m.target in names]) - len(selected)
    started = time.monotonic()
    _print(
        f"mutation: {len(selected)} mutants of {len(shown)} targets to run, {reused} outcomes reused, {args.jobs} lanes"
    )
    everything = len(selected) == len(mutants)

    def saved(final: bool = False) -> dict[str, Any]:
        return save(mutants, targets, jobs=args.jobs, seconds=time.monotonic() - started, full=final and everything)

    if selected:
        try:
            run(targets, selected, max(1, args.jobs), saved, shared=not args.own_stacks)
        except KeyboardInterrupt:
            _print(f"what was measured before the interrupt is kept in {RESULTS.relative_to(ROOT)}")
            return 130
    result = saved(final=True)
    ok = report({k: v for k, v in result["modules"].items() if k in names})
    seconds = time.monotonic() - started
    _print(f"\n{len(selected)} mutants run in {seconds / 60:.1f} min; results in {RESULTS.relative_to(ROOT)}")
    full = result.get("last_full_run")
    if full:
        _print(f"last full run: {full['mutants']} mutants in {full['runtime_seconds'] / 60:.1f} min ({full['date']})")
    return 0 if ok else 1


def save(mutants: list[Mutant], targets: list[Target], *, jobs: int, seconds: float, full: bool) -> dict[str, Any]:
    """Writes bench/mutation.json: this run's outcomes over the stored ones (re-read under a lock, so
    runs side by side keep each other's), the per-module summary, the last full run's runtime."""
    with open(Path(tempfile.gettempdir()) / "lockgate-mutation-results.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        previous: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        stored = load_outcomes()
        for m in mutants:
            # Another run's later measurement of the same mutant (runs side by side) wins too.
            if m.key in stored and (not m.done or str(stored[m.key].get("measured_at", "")) > m.measured_at):
                restore(m, stored[m.key])
        ran = [m for m in mutants if m.done]
        last_full = previous.get("last_full_run")
        if full:
            last_full = {
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "runtime_seconds": round(seconds),
                "mutants": len(mutants),
                "jobs": jobs,
            }
        result = {
            "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "tool": "cosmic-ray 8.7.0 (mutation engine and core operators) + mutation/operators.py",
            "operators": list(OPERATOR_NAMES),
            "threshold": THRESHOLD,
            "this_run": {"mutants_run": len(ran), "runtime_seconds": round(seconds), "jobs": jobs},
            "last_full_run": last_full,
            "modules": summarize(targets, mutants, load_equivalents()),
            "outcomes": {
                m.key: {
                    "target": m.target,
                    "outcome": m.outcome,
                    "seconds": round(m.seconds, 1),
                    "line": m.line,
                    "diff": m.diff,
                    "fingerprint": m.fingerprint if not m.stale else stored.get(m.key, {}).get("fingerprint", ""),
                    "measured_at": m.measured_at,
                }
                for m in mutants
                if m.outcome != "pending"
            },
        }
        tmp = RESULTS.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        tmp.replace(RESULTS)
        return result
