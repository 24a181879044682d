"""Files and inputs (issue 27): evidence and credentials are this OS user's only (0600 files, 0700
folders), whatever the umask; JSON input with a duplicate key is refused; the sign-in's "continue"
link is a canonical path on this site (a tab that browsers drop must not make it another host)."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import Client

from lockgate.activities.ledger import Ledger
from lockgate.config import Settings
from lockgate.inbox.app import _local_path
from tests.support.inbox import login_csrf_of, served_inbox
from tests.support.stack import as_person, cli, finish, run_cli, start

REFUND = {"order_id": "A-1001", "amount_cents": 100}


def mode(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The most permissive umask a careless environment could have: lockgate must not rely on it."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_a_new_ledger_is_private_whatever_the_umask(tmp_path: Path, open_umask: None) -> None:
    folder = tmp_path / "state"
    ledger = Ledger(f"sqlite:///{folder / 'ledger.db'}", checkpoint_interval=None)
    try:
        ledger.append("e:1", "run-1", "test", {"x": 1})
        assert mode(folder) == 0o700
        files = sorted(folder.glob("ledger.db*"))
        assert [p.name for p in files][:1] == ["ledger.db"] and len(files) >= 2  # the WAL too
        assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}
    finally:
        ledger.dispose()


def test_an_existing_ledger_is_narrowed(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    db.touch(mode=0o644)
    db.chmod(0o644)
    Ledger(f"sqlite:///{db}", checkpoint_interval=None).dispose()
    assert mode(db) == 0o600


def test_the_session_stack_files_are_private(settings: Settings, deps: Any) -> None:
    """The dev stack's folders list for nobody else (run as root, embedded PostgreSQL runs as its own
    OS user and needs to traverse them to its data folder: 0711); every file is 0600."""
    state = Path(settings.state_dir)
    folder_mode = 0o711 if os.geteuid() == 0 else 0o700
    assert mode(state) == folder_mode and mode(state / "dev") == folder_mode
    db = Path(settings.ledger_url.split("///", 1)[1])
    files = [state / "dev.env", db, *(p for p in (state / "dev").iterdir() if p.is_file())]
    assert {str(p): mode(p) for p in files} == {str(p): 0o600 for p in files}
    assert {"temporal.db", "pg.password", "people.password"} <= {p.name for p in files}


async def test_login_token_anchor_file_and_exports_are_private(
    env: dict[str, str], client: Client, worker_running: str, tmp_path: Path, open_umask: None
) -> None:
    handle = await start(client, worker_running, "refund-agent", REFUND)
    assert await finish(handle) is None
    fresh = tmp_path / "fresh-state"
    mine = {**env, "LOCKGATE_STATE_DIR": str(fresh)}
    mine.pop("LOCKGATE_OPERATOR_TOKEN", None)
    password = env["LOCKGATE_DEV_PASSWORD"] + "\n"
    logged = await asyncio.to_thread(run_cli, mine, "login", "erin", "--password-stdin", input=password)
    assert logged.returncode == 0, logged.stderr
    assert mode(fresh) == 0o700 and mode(fresh / "operator.json") == 0o600

    verified = await cli({**env, "LOCKGATE_STATE_DIR": str(fresh)}, "verify")
    assert verified.returncode == 0, verified.stderr
    assert mode(fresh / "ledger-anchor.json") == 0o600

    export = tmp_path / "evidence.json"
    exported = await cli(as_person(env, "carol"), "audit", handle.id, "--export", str(export))
    assert exported.returncode == 0, exported.stderr
    assert mode(export) == 0o600
    assert json.loads(export.read_text())


async def test_duplicate_keys_in_input_are_refused(env: dict[str, str], worker_running: str) -> None:
    run_id = f"refund-agent-{uuid.uuid4().hex[:10]}"
    twice = '{"order_id": "A-1001", "amount_cents": 100, "amount_cents": 99999}'
    refused = await cli(as_person(env, "erin"), "run", "refund-agent", "--input", twice, "--id", run_id)
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        "lockgate: --input has the key 'amount_cents' twice (a JSON object names each key once)"
    )
    nested = '{"order_id": "A-1001", "amount_cents": 100, "reason": "x", "notify": false, "notify": true}'
    again = await cli(as_person(env, "erin"), "run", "refund-agent", "--input", nested, "--id", run_id)
    assert again.returncode == 2 and "'notify' twice" in again.stderr


@pytest.mark.parametrize(
    ("nxt", "expected"),
    [
        ("/runs/refund-agent-1?view=all", "/runs/refund-agent-1?view=all"),
        ("/\t/evil.example", "/"),
        ("/\n/evil.example", "/"),
        ("/\r\n/evil.example", "/"),
        ("//evil.example", "/"),
        ("/\\evil.example", "/"),
        ("\\/evil.example", "/"),
        ("https://evil.example/", "/"),
        ("javascript:alert(1)", "/"),
        ("/x\x00y", "/"),
        ("/\u202eevil", "/"),
        ("/ /evil.example", "/"),
        ("", "/"),
    ],
)
def test_continue_links_are_canonical_local_paths(nxt: str, expected: str) -> None:
    assert _local_path(nxt) == expected


async def test_a_continue_link_with_a_tab_stays_on_the_site(settings: Settings, client: Client) -> None:
    """The attack as a browser sends it: `next=/<TAB>/evil.example` on the sign-in page, then the
    sign-in form posted back with it; neither the page nor the redirect names the other host."""
    from tests.support.stack import _STACK

    async with (
        served_inbox(settings, client) as (base, _inbox),
        httpx.AsyncClient(base_url=base, follow_redirects=False, timeout=30) as http,
    ):
        page = await http.get("/login", params={"next": "/\t/evil.example"})
        assert page.status_code == 200 and "evil.example" not in page.text
        resp = await http.post(
            "/login",
            data={
                "csrf": login_csrf_of(page.text),
                "username": "erin",
                "password": _STACK["LOCKGATE_DEV_PASSWORD"],
                "next": "/\t/evil.example",
            },
        )
        assert resp.status_code == 303 and resp.headers["location"] == "/"


def test_narrowing_the_ledger_file_keeps_what_this_process_writes_visible(tmp_path: Path) -> None:
    """SQLite's locks are per process, and closing any descriptor of the file drops them all. Were an
    existing ledger opened to narrow its mode (every Ledger does it; the inbox makes several), another
    process closing its last connection would believe itself the last one, checkpoint and delete the
    WAL, and this process's later writes would go to a deleted file no one else ever sees."""
    from lockgate.files import private_file

    db = tmp_path / "ledger.db"
    count = "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); print(c.execute('SELECT count(*) FROM ledger').fetchone()[0]); c.close()"

    def others_see() -> int:
        out = subprocess.run([sys.executable, "-c", count, str(db)], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return int(out.stdout)

    first = Ledger(f"sqlite:///{db}", checkpoint_interval=None)
    try:
        first.append("e:1", "run-1", "test", {"x": 1})
        db.chmod(0o644)
        private_file(db)
        assert mode(db) == 0o600
        seen = others_see()
        first.append("e:2", "run-1", "test", {"x": 2})
        assert others_see() == seen + 1
    finally:
        first.dispose()
