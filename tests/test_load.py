"""Scenario 19: 200 concurrent runs, 50 of them needing approval, approved by a script."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from temporalio.client import Client

from lockgate.ops import list_pending, send_verdict
from tests.support.stack import Outside, finish, person, start, status_of

AUTONOMOUS, GATED = 150, 50


async def test_200_concurrent_runs_with_50_approvals(
    client: Client, worker_running: str, outside: Outside, deps: Any
) -> None:
    with outside.pg() as conn:
        conn.execute(
            "INSERT INTO orders (id, customer_id, total_cents) SELECT 'B-' || (2000 + g), 'C-501', 20000 "
            "FROM generate_series(0, %s) g ON CONFLICT (id) DO NOTHING",
            (GATED - 1,),
        )
    started = time.monotonic()
    autonomous = [
        start(client, worker_running, "refund-agent", {"order_id": "A-1001", "amount_cents": 10})
        for _ in range(AUTONOMOUS)
    ]
    gated = [
        start(client, worker_running, "refund-agent", {"order_id": f"B-{2000 + i}", "amount_cents": 15000})
        for i in range(GATED)
    ]
    handles = await asyncio.gather(*autonomous, *gated)
    gated_ids = {h.id for h in handles[AUTONOMOUS:]}

    # The approver script: work from `lockgate pending` until every gated run was approved. Every
    # listed request must be real (its approval accepted), and nothing but gated runs may ever show.
    approved: set[str] = set()
    polls = 0
    while approved != gated_ids:
        assert time.monotonic() - started < 240, f"approved {len(approved)} of {GATED}"
        listed = await list_pending(client, "refund-agent")
        polls += 1
        listed_runs = {r["run_id"] for r in listed}
        assert listed_runs <= gated_ids, listed_runs - gated_ids
        for row in listed:
            if row["run_id"] in approved:
                continue  # visibility lags a moment behind an approval already recorded
            attempt = await send_verdict(
                client, row["run_id"], row["request_id"], session=person("alice"), approve=True
            )
            assert attempt.accepted, (row, attempt.reason)
            approved.add(row["run_id"])
        await asyncio.sleep(0.2)

    results = await asyncio.gather(*(finish(h) for h in handles))
    assert results == [None] * (AUTONOMOUS + GATED)
    for _ in range(100):
        if not await list_pending(client, "refund-agent"):
            break
        await asyncio.sleep(0.2)
    assert await list_pending(client, "refund-agent") == []
    states = await asyncio.gather(*(status_of(h) for h in handles[:5] + handles[-5:]))
    assert {s.state for s in states} == {"completed"}
    with outside.pg() as conn:
        (refunds,) = conn.execute(
            "SELECT count(*) FROM refunds WHERE run_id = ANY(%s)", ([h.id for h in handles],)
        ).fetchone()
    assert refunds == AUTONOMOUS + GATED
    outside.assert_nothing_leaked(within=30)
    print(f"\n200 runs, {GATED} approvals in {time.monotonic() - started:.1f}s, {polls} pending polls")
