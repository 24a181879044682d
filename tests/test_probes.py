"""The worker's liveness and readiness endpoints (issue 29.5) on the real stack: ready only while the
worker polls, its Vault token is valid and the ledger answers; not ready when Vault is unreachable,
when the ledger's database is gone, and while the worker drains; live throughout."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
import uuid
from typing import Any

from lockgate import worker
from lockgate.activities.ledger import Ledger
from lockgate.activities.vault import VaultBroker
from lockgate.config import Settings
from lockgate.probes import Probes
from tests.support.pgdb import fresh_database


def _get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


async def probe(port: int, path: str) -> tuple[int, dict[str, Any]]:
    return await asyncio.to_thread(_get, port, path)


async def test_ready_only_while_polling_with_vault_and_ledger(settings: Settings, deps: Any, client: Any) -> None:
    probes = Probes(deps.vault, deps.ledger)
    await probes.serve("127.0.0.1:0")
    try:
        code, body = await probe(probes.port, "/readyz")
        assert code == 503 and body["checks"]["pollers"].startswith("the worker is not running"), body
        assert body["checks"]["vault"] == "ok" and body["checks"]["ledger"] == "ok"
        assert (await probe(probes.port, "/livez"))[0] == 200

        w = worker.build_worker(client, deps, task_queue=f"probes-{uuid.uuid4().hex[:8]}")
        async with w:
            probes.worker = w
            code, body = await probe(probes.port, "/readyz")
            assert code == 200 and body == {"ok": True, "checks": {"pollers": "ok", "vault": "ok", "ledger": "ok"}}
            probes.draining = True  # what run_worker sets when SIGTERM arrives
            code, body = await probe(probes.port, "/readyz")
            assert code == 503 and body["checks"]["pollers"].startswith("draining"), body
            assert (await probe(probes.port, "/livez"))[0] == 200  # draining is not dead
        probes.draining = False
        code, body = await probe(probes.port, "/readyz")
        assert code == 503 and "not running" in body["checks"]["pollers"]
        code, body = await probe(probes.port, "/livez")
        assert code == 503 and body["checks"]["worker"] == "the worker shut down"
        assert (await probe(probes.port, "/nope"))[0] == 404
    finally:
        await probes.close()


async def test_not_ready_when_vault_is_unreachable_or_the_ledger_is_gone(settings: Settings, deps: Any) -> None:
    assert settings.vault_role_id and settings.vault_secret_id
    with fresh_database(settings) as (_name, url):
        ledger = Ledger(url)
        probes = Probes(deps.vault, ledger)
        probes.worker = _Running()
        await probes.serve("127.0.0.1:0")
        try:
            assert (await probe(probes.port, "/readyz"))[0] == 200
            # Vault: nothing listens at the address any more (port 9: discard, closed here).
            probes.vault = VaultBroker("http://127.0.0.1:9", settings.vault_role_id, settings.vault_secret_id)
            code, body = await probe(probes.port, "/readyz")
            assert code == 503 and body["checks"]["vault"].startswith("Vault: "), body
            assert body["checks"]["ledger"] == "ok"
            probes.vault = deps.vault
            assert (await probe(probes.port, "/readyz"))[0] == 200
            # The ledger's database dropped under the worker (its connections are cut).
            import psycopg
            from psycopg import sql

            assert settings.pg_dsn
            with psycopg.connect(settings.pg_dsn.replace("/shop?", "/postgres?"), autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(_name)))
            code, body = await probe(probes.port, "/readyz")
            assert code == 503 and body["checks"]["ledger"].startswith("ledger: "), body
            assert body["checks"]["vault"] == "ok"
            assert (await probe(probes.port, "/livez"))[0] == 200  # a dependency down is not a restart
        finally:
            await probes.close()
            ledger.dispose()


class _Running:
    """A worker that polls (for the checks that are not about the worker)."""

    is_running = True
    is_shutdown = False
