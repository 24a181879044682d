"""Bounded connections (issue 29): a worker's ledger never holds more PostgreSQL connections than
its pool settings allow, however much work it has; in PgBouncer mode it prepares no statement on
the server. Counted by PostgreSQL itself (pg_stat_activity, pg_prepared_statements)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

from sqlalchemy import text

from lockgate import worker
from lockgate.activities.ledger import Ledger, PoolLimits
from lockgate.config import Settings, load_settings
from lockgate.worker import ledger_pool
from tests.support.pgdb import connections_to, fresh_database
from tests.support.stack import Outside, finish, start


def test_pool_settings_are_typed_and_reach_the_ledger() -> None:
    s = load_settings(
        {
            "LOCKGATE_STATE_DIR": "/nonexistent",
            "LOCKGATE_LEDGER_POOL_SIZE": "3",
            "LOCKGATE_LEDGER_POOL_OVERFLOW": "0",
            "LOCKGATE_LEDGER_RAW_POOL": "2",
            "LOCKGATE_LEDGER_PGBOUNCER": "1",
        }
    )
    assert ledger_pool(s) == PoolLimits(size=3, overflow=0, raw=2, timeout=30.0, pgbouncer=True)
    assert ledger_pool(s).most == 5
    import pytest

    from lockgate.errors import UserError

    with pytest.raises(UserError, match="invalid setting LOCKGATE_LEDGER_POOL_SIZE"):
        load_settings({"LOCKGATE_STATE_DIR": "/nonexistent", "LOCKGATE_LEDGER_POOL_SIZE": "0"})


async def test_a_worker_under_load_stays_within_its_pool(settings: Settings, deps: Any, outside: Outside) -> None:
    with outside.pg() as conn:  # every order fully refundable again
        conn.execute("UPDATE refunds SET reversed_at = now() WHERE reversed_at IS NULL")
    with fresh_database(settings) as (name, url):
        limited = settings.model_copy(
            update={"ledger_url": url, "ledger_pool_size": 2, "ledger_pool_overflow": 1, "ledger_raw_pool": 2}
        )
        ceiling = 5
        d = await asyncio.to_thread(worker.build_deps, limited, deps.agents)
        samples: list[int] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append(connections_to(limited, name))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            client = await worker.connect(limited, d.vault)
            queue = f"pools-{uuid.uuid4().hex[:8]}"
            async with worker.build_worker(client, d, task_queue=queue):
                handles = [
                    await start(client, queue, "refund-agent", {"order_id": "A-1003", "amount_cents": 10})
                    for _ in range(8)
                ]

                def read_hard(run_id: str) -> int:
                    return sum(len(d.ledger.events(run_id)) for _ in range(20))

                # Twelve more threads read the ledger meanwhile: demand far above the pool.
                readers = [asyncio.to_thread(read_hard, h.id) for h in handles + handles[:4]]
                outcomes = await asyncio.gather(*(finish(h) for h in handles))
                await asyncio.gather(*readers)
        finally:
            stop.set()
            sampler.join()
            d.ledger.dispose()
        assert outcomes == [None] * 8, outcomes
        assert samples and max(samples) <= ceiling, (max(samples), ceiling)
        print(f"connections to the ledger database: at most {max(samples)} (ceiling {ceiling})")
        assert max(samples) >= 3, samples  # the load did use the pool: the bound is what held it


def test_pgbouncer_mode_prepares_nothing_on_the_server(settings: Settings) -> None:
    with fresh_database(settings) as (_name, url):
        for pgbouncer, expect_prepared in ((False, True), (True, False)):
            ledger = Ledger(url, pool=PoolLimits(size=1, overflow=0, raw=1, pgbouncer=pgbouncer))
            try:
                run = f"pool-{uuid.uuid4().hex[:8]}"
                for i in range(8):  # past psycopg's default prepare threshold (5)
                    ledger.append(f"{run}-{i}", run, "note", {"i": i})
                    ledger.events(run)
                with ledger._raw.connection() as raw:  # pyright: ignore[reportPrivateUsage]
                    row = raw.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()
                    raw_prepared = int(row[0]) if row else 0
                with ledger.engine.connect() as conn:
                    for _ in range(8):
                        conn.execute(text("SELECT count(*) FROM ledger WHERE run_id = :r"), {"r": run})
                    dbapi: Any = conn.connection.driver_connection
                    row = dbapi.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()
                    pool_prepared = int(row[0]) if row else 0
            finally:
                ledger.dispose()
            assert (raw_prepared > 0) is expect_prepared, (pgbouncer, raw_prepared)
            assert (pool_prepared > 0) is expect_prepared, (pgbouncer, pool_prepared)


def test_a_malformed_setting_stops_the_worker_with_one_line(tmp_path: Any) -> None:
    import os
    import subprocess
    import sys

    for variable, value in (
        ("LOCKGATE_LEDGER_POOL_OVERFLOW", "lots"),
        ("LOCKGATE_MAX_CACHED_WORKFLOWS", "0"),
        ("LOCKGATE_METRICS_INTERVAL", "-1"),
    ):
        env = {**os.environ, "LOCKGATE_STATE_DIR": str(tmp_path), variable: value}
        proc = subprocess.run(
            [sys.executable, "-m", "lockgate.worker"], env=env, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 2, (variable, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert lines == [lines[0]] and lines[0].startswith(f"lockgate worker: invalid setting {variable}:"), (
            variable,
            proc.stderr,
        )


def test_a_ledger_transaction_a_vanished_worker_left_open_is_ended_by_the_server(
    settings: Settings, monkeypatch: Any
) -> None:
    """A worker cut off from PostgreSQL in the middle of a ledger transaction leaves its backend idle
    in that transaction, holding the run's chain locked: the server ends it (after
    IDLE_TRANSACTION_SECONDS; 1 s here) and the other workers' appends to that run go on."""
    from lockgate.activities.ledger import store

    monkeypatch.setattr(store, "IDLE_TRANSACTION_SECONDS", 1)
    with fresh_database(settings) as (_name, url):
        vanished = Ledger(url, pool=PoolLimits(size=1, overflow=0, raw=1))
        other = Ledger(url, pool=PoolLimits(size=1, overflow=0, raw=1))
        run = f"pool-{uuid.uuid4().hex[:8]}"
        cleanup: list[Any] = []
        try:
            other.append(f"{run}-0", run, "note", {"i": 0})
            conn = vanished.engine.connect()
            conn.begin()
            cleanup.append(conn.invalidate)  # its connection is gone: nothing to roll back
            vanished._head(conn, run, f"{run}-x")  # pyright: ignore[reportPrivateUsage] - an append's first step
            # ...and nothing more from that worker.
            appended = threading.Event()

            def append() -> None:
                other.append(f"{run}-1", run, "note", {"i": 1})
                appended.set()

            threading.Thread(target=append, daemon=True).start()
            assert appended.wait(timeout=15), "the chain stayed locked by the vanished worker's transaction"
            assert [e["i"] for e in other.events(run)] == [0, 1]
        finally:
            for done in cleanup:
                done()
            vanished.dispose()
            other.dispose()
