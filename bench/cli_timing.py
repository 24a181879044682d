"""`make bench-cli` / `python -m bench.cli_timing`: operator commands with the drop-in apps declared
vs none (issue 33.5).

Each command runs as a fresh `lockgate` process, as an operator types it, against a real Temporal
dev server (started here on a free port, stopped again) and a small SQLite ledger: once with
`LOCKGATE_AGENT_MODULES` naming both frameworks' example apps (Pydantic AI and OpenAI Agents), once
with none, interleaved, median of N. Target: each operator command <= 1.10x with the apps declared.
`policy check` (which needs the agents' tools) is shown for context. Figures go to
bench/results.json under "cli" (the main suite keeps that key).
"""

from __future__ import annotations

import argparse
import json
import os
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
    from lockgate.devstack import SEARCH_ATTRIBUTES, free_port, temporal_binary

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
    for name, kind in SEARCH_ATTRIBUTES.items():
        argv += ["--search-attribute", f"{name}={kind}"]
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


def _time(argv: list[str], env: dict[str, str]) -> float:
    lockgate = Path(sys.executable).parent / "lockgate"
    start = time.perf_counter()
    subprocess.run([str(lockgate), *argv], env=env, cwd=ROOT, capture_output=True, timeout=300, check=False)
    return time.perf_counter() - start


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
            samples: dict[str, list[float]] = {"none": [], "apps": []}
            for _ in range(reps):
                for mode, mode_env in modes.items():
                    samples[mode].append(_time(argv, mode_env))
            none, apps = statistics.median(samples["none"]), statistics.median(samples["apps"])
            ratio = apps / none
            out[label] = {
                "without_apps_s": round(none, 3),
                "with_apps_s": round(apps, 3),
                "ratio": round(ratio, 3),
                "target": f"<= {TARGET:.2f}x" if operator else "",
                "ok": (ratio <= TARGET) if operator else None,
                "samples": {m: [round(x, 3) for x in v] for m, v in samples.items()},
            }
            print(
                f"{label:<18} none {none:6.2f}s  apps {apps:6.2f}s  {ratio:5.2f}x  "
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
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--reps", type=int, default=5, help="runs per command and mode (median)")
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
            "note": "fresh `lockgate` process per command; median; real Temporal dev server, SQLite ledger",
            "commands": commands,
            "failed": failed,
        }
        RESULTS.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
