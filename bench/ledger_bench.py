"""Figure 7: the audit ledger at scale.

(a) appends/s with 1, 4 and 16 concurrent writers (one process each, each appending to its own run,
    as workers of different runs do) on PostgreSQL: lockgate's ledger (a chain per run, one head
    row locked per append) against the design it replaced (one global chain behind one advisory
    lock: bench/ledger_single_lock.py), in the same run, on the same server, in databases of their own.
(b) `lockgate verify` of a ledger of 1,000,000 entries (10,000 runs of 100, every one sealed in a
    signed checkpoint), in a process of its own: entries/s and its peak RSS. The rows are generated
    with correct hashes and written in bulk (executemany), not appended one by one.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import resource
import subprocess
import sys
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.harness import Bench, say
from bench.ledger_writer import writer as _writer

__all__ = ["appends", "verify_million"]


def _database(b: Bench, name: str) -> str:
    import psycopg
    from psycopg import sql

    dsn = b.env["LOCKGATE_PG_DSN"]
    with psycopg.connect(dsn.replace("/shop?", "/postgres?"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return dsn.replace("postgresql://", "postgresql+psycopg://").replace("/shop?", f"/{name}?")


# Window pairs per level (each design `seconds` long in every pair).
PAIRS = 3


async def appends(b: Bench, levels: tuple[int, ...] = (1, 4, 16), seconds: float = 1.5) -> dict[str, Any]:
    urls = {
        "chains": _database(b, f"bench_chains_{uuid.uuid4().hex[:6]}"),
        "single_lock": _database(b, f"bench_single_{uuid.uuid4().hex[:6]}"),
    }
    # Both schemas exist before any writer process opens them.
    from bench.ledger_single_lock import SingleLockLedger
    from lockgate.activities.ledger import Ledger

    Ledger(urls["chains"], checkpoint_interval=None).dispose()
    SingleLockLedger(urls["single_lock"]).engine.dispose()
    out: dict[str, Any] = {"seconds": seconds, "levels": {}}
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(max(levels), mp_context=multiprocessing.get_context("spawn")) as pool:
        # Spawn and import once: every process opens both ledgers before anything is timed.
        await asyncio.gather(
            *(
                loop.run_in_executor(pool, _writer, design, url, f"warm-{i}", 0.0, 0.0)
                for i in range(max(levels))
                for design, url in urls.items()
            )
        )
        for level in levels:
            # Short windows, the two designs back to back in alternating order, several times: each
            # pair's ratio sees the same machine, and the median pair decides (a shared machine's
            # load comes and goes between windows, rarely within a pair).
            pairs: list[dict[str, float]] = []
            for rep in range(PAIRS):
                pair: dict[str, float] = {}
                for design in list(urls) if rep % 2 else list(reversed(list(urls))):
                    start_at = time.time() + 0.3
                    counts = await asyncio.gather(
                        *(
                            loop.run_in_executor(
                                pool,
                                _writer,
                                design,
                                urls[design],
                                f"w{level}-{i}-{uuid.uuid4().hex[:6]}",
                                start_at,
                                seconds,
                            )
                            for i in range(level)
                        )
                    )
                    pair[design] = sum(counts) / seconds
                pair["ratio"] = pair["chains"] / pair["single_lock"]
                pairs.append(pair)
            pairs.sort(key=lambda p: p["ratio"])
            row: dict[str, Any] = dict(pairs[len(pairs) // 2])  # the median pair
            row["ratios"] = [round(p["ratio"], 2) for p in pairs]
            out["levels"][str(level)] = row
            say(
                f"ledger appends, {level} writers: chains {row['chains']:.0f}/s, single lock "
                f"{row['single_lock']:.0f}/s ({row['ratio']:.2f}x; pairs {row['ratios']})"
            )
    return out


# -- (b) verify of a million entries -------------------------------------------------------------
def generate(path: Path, signer: Any, runs: int, per_run: int, row_key: Any = None) -> dict[str, Any]:
    """Writes a ledger of runs x per_run entries, each run closed and sealed in a signed checkpoint
    (100 runs per checkpoint), with correct hashes and (given the workers' row-key source) each
    row's MAC, in bulk."""
    import hashlib
    import sqlite3

    from lockgate.activities.ledger import Ledger
    from lockgate.evidence import GENESIS, Head, checkpoint_body, checkpoint_message, entry_hash, signature_version
    from lockgate.models import canonical_json

    ledger = Ledger(f"sqlite:///{path}", checkpoint_interval=None)
    ledger_id = ledger.ledger_id
    ledger.dispose()
    mac = row_key(ledger_id).mac if row_key is not None else (lambda _digest: "")
    t0 = time.perf_counter()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous=OFF")
    now = datetime.now(UTC).isoformat()
    data = canonical_json({"tool": "bench.noop", "outcome": "allow", "policy_ids": ["bench.allow"], "step": 0})
    prev_cp = GENESIS
    keys: dict[int, str] = {}
    per_cp = 100
    for first in range(0, runs, per_cp):
        rows = []
        heads = []
        for r in range(first, min(runs, first + per_cp)):
            run_id = f"run-{r:07d}"
            prev = GENESIS
            for n in range(1, per_run + 1):
                kind = "run.closed" if n == per_run else "decision"
                key = f"{kind}:{run_id}:{n}"
                h = entry_hash(prev, run_id, n, key, run_id, kind, now, data)
                rows.append((key, run_id, run_id, n, kind, now, data, prev, h, now, mac(h)))
                prev = h
            heads.append(Head(run_id, per_run, prev, True))
        conn.executemany(
            "INSERT INTO ledger (event_key, run_id, chain, chain_seq, kind, at, data, prev_hash, hash, recorded_at, mac) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        seq = first // per_cp + 1
        heads.sort(key=lambda h: h.chain)
        body = checkpoint_body(ledger_id, seq, prev_cp, now, heads)
        digest = hashlib.sha256(body.encode()).hexdigest()
        signature = signer.sign(checkpoint_message(digest))
        version = signature_version(signature)
        if version not in keys:
            keys = signer.public_keys()
        conn.execute(
            "INSERT INTO ledger_checkpoints (seq, body, hash, signature, at) VALUES (?, ?, ?, ?, ?)",
            (seq, body, digest, signature, now),
        )
        conn.executemany(
            "INSERT INTO ledger_checkpoint_heads (checkpoint, idx, chain, size, head, final) VALUES (?, ?, ?, ?, ?, ?)",
            [(seq, i, h.chain, h.size, h.head, True) for i, h in enumerate(heads)],
        )
        conn.executemany(
            "INSERT INTO ledger_heads (chain, size, head, closed, sealed_size, sealed_final, dirty) "
            "VALUES (?, ?, ?, 1, ?, 1, 0)",
            [(h.chain, h.size, h.head, h.size) for h in heads],
        )
        prev_cp = digest
    conn.executemany(
        "INSERT INTO ledger_keys (version, key_name, public_key, recorded_at) VALUES (?, ?, ?, ?)",
        [(v, signer.key_name, k, now) for v, k in keys.items()],
    )
    conn.commit()
    conn.close()
    return {"entries": runs * per_run, "runs": runs, "generate_s": time.perf_counter() - t0, "keys": keys}


_PEAK = """
import sys
from lockgate.cli import main
code = main(sys.argv[1:])
# VmHWM: this process's own peak (ru_maxrss would also count the parent's image before exec).
with open("/proc/self/status") as f:
    peak = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
sys.stderr.write(f"VmHWM_KIB={peak}\\n")
sys.exit(code)
"""


def _verify_process(env: dict[str, str], keys_file: Path) -> tuple[dict[str, Any], float, float]:
    """`lockgate verify --json --keys FILE` in a child process: (its report, wall s, its peak RSS MiB)."""
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK, "verify", "--json", "--keys", str(keys_file)],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"verify exited {proc.returncode}: {proc.stderr[-500:]} {proc.stdout[-500:]}")
    peak = next(int(line.split("=")[1]) for line in proc.stderr.splitlines() if line.startswith("VmHWM_KIB="))
    return json.loads(proc.stdout), wall, peak / 1024


async def verify_million(b: Bench, base: Path, entries: int = 1_000_000, per_run: int = 100) -> dict[str, Any]:
    from lockgate.activities.ledger.rowkey import VaultRowKeys

    signer = b.deps.ledger.signer
    assert signer is not None, "the bench worker's ledger signs checkpoints"
    vault = b.deps.vault
    rows = VaultRowKeys(lambda: vault.client)  # rows MAC'd as a worker writes them (verify checks each)
    path = base / "ledger-1m.db"
    gen = await asyncio.to_thread(generate, path, signer, entries // per_run, per_run, rows)
    say(f"verify: generated {gen['entries']:,} entries in {gen['runs']:,} runs in {gen['generate_s']:.1f}s")
    keys_file = base / "ledger-1m-keys.json"
    keys_file.write_text(json.dumps({str(v): k for v, k in gen["keys"].items()}))
    env = {**b.env, "LOCKGATE_LEDGER_URL": f"sqlite:///{path}", "LOCKGATE_STATE_DIR": str(base / "verify-state")}
    report, wall, rss = await asyncio.to_thread(_verify_process, env, keys_file)
    assert report["intact"] and report["entries"] == gen["entries"], report.get("problems")
    # The same command on a ledger of one entry: what the process needs before it reads any row.
    small = base / "ledger-1.db"
    await asyncio.to_thread(generate, small, signer, 1, 1, rows)
    _small, _small_wall, rss_small = await asyncio.to_thread(
        _verify_process, {**env, "LOCKGATE_LEDGER_URL": f"sqlite:///{small}"}, keys_file
    )
    size_mib = path.stat().st_size / 2**20
    say(
        f"verify: {report['entries']:,} entries in {wall:.1f}s ({report['entries'] / wall:,.0f}/s), peak RSS "
        f"{rss:.0f} MiB (a 1-entry ledger: {rss_small:.0f} MiB); database {size_mib:.0f} MiB"
    )
    path.unlink(missing_ok=True)
    return {
        "entries": report["entries"],
        "checkpoints": report["checkpoints"],
        "generate_s": gen["generate_s"],
        "verify_s": wall,
        "entries_per_s": report["entries"] / wall,
        "peak_rss_mib": rss,
        "peak_rss_one_entry_mib": rss_small,
        "database_mib": size_mib,
        "self_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
