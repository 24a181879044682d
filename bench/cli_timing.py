"""`make bench-cli` / `python -m bench.cli_timing`: operator commands with the drop-in apps declared
vs none (issue 33.5).

Each command runs as a fresh `lockgate` process, as an operator types it, against a real Temporal
dev server (started here on a free port, stopped again) and a small SQLite ledger: once with
`LOCKGATE_AGENT_MODULES` naming both frameworks' example apps (Pydantic AI and OpenAI Agents), once
with none, interleaved, median of N of each process's CPU time (wall time recorded beside it: on a
shared machine it also measures the neighbours), plus the number of modules each imports
(deterministic). Target: each operator command <= 1.10x with the apps declared.
`policy check` (which needs the agents' tools) is shown for context. Figures go to
bench/results.json under "cli" (the main suite keeps that key).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results.json"
APPS = "examples.pydantic_ai_agent,examples.openai_agents_agent"
RUN = "bench-cli-run"
TARGET = 1.10
# (label, argv, operator command with a target?)
COMMANDS: list[tuple[str, list[str], bool]] = [
    ("status --help", ["status", "--help"], True),
    ("status RUN", ["status", RUN], True),
    ("pending", ["pending"], True),
    ("approve RUN REQ", ["approve", RUN, "1.1"], True),
    ("audit RUN", ["audit", RUN], True),
    ("verify", ["verify"], True),
    ("policy check", ["policy", "check"], False),
]


def _temporal(base: Path) -> tuple[subprocess.Popen[bytes], str]:
    from lockgate.devstack import free_port, temporal_binary
    from lockgate.setup import search_attribute_flags  # the ones the workflows write

    port = free_port()
    argv = [
        str(temporal_binary()),
        "server",
        "start-dev",
        "--headless",
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        "--db-filename",
        str(base / "temporal.db"),
        "--log-level",
        "error",
    ]
    for flag in search_attribute_flags():
        argv += ["--search-attribute", flag]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        probe = subprocess.run(
            [str(temporal_binary()), "operator", "cluster", "health", "--address", address],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode == 0 and "SERVING" in probe.stdout:
            return proc, address
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("temporal dev server did not come up")


def _ledger(url: str) -> None:
    from lockgate.activities.ledger import Ledger

    ledger = Ledger(url)
    try:
        ledger.append(f"run.opened:{RUN}", RUN, "run.opened", {"agent": "refund-agent", "initiator": "erin"})
        for step in range(1, 6):
            ledger.append(f"decision:{RUN}:{step}", RUN, "decision", {"step": step, "tool": "orders.lookup"})
        ledger.append(f"run.closed:{RUN}", RUN, "run.closed", {"state": "completed"})
    finally:
        ledger.dispose()


def _time(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one `lockgate` process. CPU time (user + system of the child)
    is what the process itself costs; wall time on a shared machine also measures the neighbours."""
    lockgate = Path(sys.executable).parent / "lockgate"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([str(lockgate), *argv], env=env, cwd=ROOT, capture_output=True, timeout=300, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _imports(argv: list[str], env: dict[str, str]) -> int:
    """How many modules the command imports (`-X importtime` lists each once): deterministic where
    timings on a shared machine are not."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "lockgate.cli", *argv],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return sum(1 for line in proc.stderr.splitlines() if line.startswith("import time:")) - 1


def measure(reps: int) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="lockgate-bench-cli-"))
    proc = None
    try:
        proc, address = _temporal(base)
        url = f"sqlite:///{base / 'ledger.db'}"
        _ledger(url)
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "LOCKGATE_TEMPORAL_ADDRESS": address,
            "LOCKGATE_LEDGER_URL": url,
            "LOCKGATE_STATE_DIR": str(base / "state"),
            "LOCKGATE_PAYLOAD_KEY": "",
            "LOCKGATE_OPERATOR_TOKEN": "",
            "VAULT_TOKEN": "",
            "VAULT_ADDR": "http://127.0.0.1:9",
            "LOCKGATE_VAULT_ROLE_ID": "",
            "LOCKGATE_VAULT_SECRET_ID": "",
        }
        modes = {"none": {**env, "LOCKGATE_AGENT_MODULES": ""}, "apps": {**env, "LOCKGATE_AGENT_MODULES": APPS}}
        for mode_env in modes.values():  # warm the OS file cache and bytecode for both
            _time(["policy", "check"], mode_env)
        out: dict[str, Any] = {}
        for label, argv, operator in COMMANDS:
            wall: dict[str, list[float]] = {"none": [], "apps": []}
            cpu: dict[str, list[float]] = {"none": [], "apps": []}
            for _ in range(reps):
                for mode, mode_env in modes.items():
                    w, c = _time(argv, mode_env)
                    wall[mode].append(w)
                    cpu[mode].append(c)
            # Judged on CPU time, median of N: what the command costs, whoever else runs on the
            # machine. Wall time is recorded beside it.
            none, apps = statistics.median(cpu["none"]), statistics.median(cpu["apps"])
            ratio = apps / none
            wall_ratio = statistics.median(wall["apps"]) / statistics.median(wall["none"])
            modules = {mode: _imports(argv, mode_env) for mode, mode_env in modes.items()}
            out[label] = {
                "cpu_without_apps_s": round(none, 3),
                "cpu_with_apps_s": round(apps, 3),
                "ratio": round(ratio, 3),
                "wall_without_apps_s": round(statistics.median(wall["none"]), 3),
                "wall_with_apps_s": round(statistics.median(wall["apps"]), 3),
                "wall_ratio": round(wall_ratio, 3),
                "modules_imported": {"without_apps": modules["none"], "with_apps": modules["apps"]},
                "target": f"<= {TARGET:.2f}x" if operator else "",
                "ok": (ratio <= TARGET) if operator else None,
                "samples_cpu": {m: [round(x, 3) for x in v] for m, v in cpu.items()},
                "samples_wall": {m: [round(x, 3) for x in v] for m, v in wall.items()},
            }
            print(
                f"{label:<18} cpu none {none:5.2f}s apps {apps:5.2f}s {ratio:5.2f}x  "
                f"wall {wall_ratio:5.2f}x  modules {modules['none']}/{modules['apps']}  "
                + (("PASS" if ratio <= TARGET else "FAIL") if operator else "(context)"),
                flush=True,
            )
        return out
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the finally stops the server
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--reps", type=int, default=7, help="runs per command and mode")
    p.add_argument("--no-write", action="store_true", help="print only; leave bench/results.json alone")
    args = p.parse_args(argv)
    commands = measure(args.reps)
    failed = [k for k, v in commands.items() if v["ok"] is False]
    if not args.no_write:
        doc = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        doc["cli"] = {
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "apps": APPS,
            "reps": args.reps,
            "note": "fresh `lockgate` process per command; ratio of median CPU time (user+sys) over reps, "
            "wall_ratio beside it; real Temporal dev server, SQLite ledger",
            "commands": commands,
            "failed": failed,
        }
        RESULTS.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
