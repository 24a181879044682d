"""Chaos across hosts on this machine (issue 29, item 7): slow, run with --run-slow (`make test-slow`).

Three "hosts" (`LOCKGATE_CHAOS_HOSTS=2`: two) are network namespaces with private addresses on a bridge this module creates (names
and a /24 chosen per run, so another checkout's run can go beside it; removed at the end whatever
happened). The shared servers listen on addresses of their own on that bridge: Temporal (.1),
OpenBao (.2) and PostgreSQL (.3, TCP; the ledger and the tools' database). Each host runs a real
`lockgate worker` (services on: reaper, archiver, checkpointer) on one task queue. A host is cut off
from one server by a blackhole route to that server's address inside its namespace (no iptables or
nft on these machines; ../shared/STACK.md).

Traffic is `chaos-agent` runs (tests/chaos_agents.py): two effect-writing steps each, every third
run failing at its second step by design so its first step is compensated. After each scenario:
every run ended as designed (completed, or failed with its compensation), no step's effect exists
twice and none was undone twice, no undo is missing, no Vault lease or dynamic PostgreSQL role is
left, work done while a host was cut off was done by the surviving hosts, and `lockgate verify`
passes on the shared ledger.

SCENARIOS.md: 1 (SIGKILL while a tool holds a lease), 2 (exactly one side effect), 4 (terminate: the
reaper compensates, here on a surviving host), 5 (Vault unreachable: no tool runs without its
lease) across hosts.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, LiteralString

import psycopg
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle

from lockgate.config import load_settings
from lockgate.devstack import DevStack, _embedded_postgres, free_port
from lockgate.identity import OperatorSession, login_userpass
from tests.support.stack import ROOT, Outside, finish, ledger_events, start

pytestmark = pytest.mark.slow

AGENTS = "lockgate.demo.shop,lockgate.demo.incident,tests.chaos_agents"
# Three hosts by default; LOCKGATE_CHAOS_HOSTS=2 runs the same scenarios with two (one survivor).
HOSTS = tuple(f"h{i}" for i in range(1, max(2, int(os.environ.get("LOCKGATE_CHAOS_HOSTS", "3"))) + 1))
# Work a host had already begun when it was cut off may still land just after the cut.
GRACE_S = 15.0


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {out.stderr.strip()}")
    return out


# -- the network -----------------------------------------------------------------------------------
class Net:
    """A bridge with the servers' addresses and one namespace per host, attached by a veth pair."""

    def __init__(self, hosts: tuple[str, ...]) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.bridge = f"lgc{self.tag}"
        self.subnet = self._free_subnet()
        base = self.subnet.network_address
        self.temporal, self.vault, self.pg = (str(base + i) for i in (1, 2, 3))
        self.hosts = {name: str(base + 11 + i) for i, name in enumerate(hosts)}
        self.ns = {name: f"lgchaos-{self.tag}-{name}" for name in hosts}
        self.created: list[str] = []

    @staticmethod
    def _free_subnet() -> ipaddress.IPv4Network:
        used = sh("ip", "-4", "-o", "addr").stdout + sh("ip", "-4", "route").stdout
        rng = random.SystemRandom()
        for _ in range(100):
            net = ipaddress.IPv4Network(f"10.{rng.randrange(160, 250)}.{rng.randrange(0, 256)}.0/24")
            if f"10.{net.network_address.packed[1]}.{net.network_address.packed[2]}." not in used:
                return net
        raise AssertionError("no free private /24 found")

    def up(self) -> None:
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        self.created.append("bridge")
        for ip in (self.temporal, self.vault, self.pg):
            sh("ip", "addr", "add", f"{ip}/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        for i, (name, ip) in enumerate(self.hosts.items()):
            ns, outer, inner = self.ns[name], f"lgc{self.tag}h{i}", f"lgc{self.tag}n{i}"
            sh("ip", "netns", "add", ns)
            self.created.append(ns)
            sh("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
            sh("ip", "link", "set", outer, "master", self.bridge)
            sh("ip", "link", "set", outer, "up")
            sh("ip", "link", "set", inner, "netns", ns)
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", inner)
            sh("ip", "-n", ns, "link", "set", inner, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")

    def cut(self, host: str, server_ip: str) -> None:
        sh("ip", "-n", self.ns[host], "route", "add", "blackhole", f"{server_ip}/32")

    def heal(self, host: str, server_ip: str) -> None:
        sh("ip", "-n", self.ns[host], "route", "del", "blackhole", f"{server_ip}/32", check=False)

    def down(self) -> None:
        for name in reversed(self.created):
            if name == "bridge":
                sh("ip", "link", "del", self.bridge, check=False)
            else:  # deleting the namespace deletes its veth end, and with it the peer on the bridge
                sh("ip", "netns", "del", name, check=False)
        self.created.clear()


# -- the cluster -----------------------------------------------------------------------------------
@dataclass
class Cluster:
    net: Net
    dev: DevStack
    home: Path
    env: dict[str, str]  # the test's own (host namespace): root token, socket DSN
    worker_env: dict[str, str]
    client: Client
    erin: OperatorSession
    outside: Outside
    hold_dir: Path
    deps: Any  # the test's own worker dependencies: reads the shared ledger
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def log(self, host: str) -> Path:
        return self.home / f"worker-{host}.log"

    def start_worker(self, host: str) -> None:
        env = {**self.worker_env, "CHAOS_HOST": host, "LOCKGATE_STATE_DIR": str(self.home / f"state-{host}")}
        with open(self.log(host), "ab") as out:
            self.procs[host] = subprocess.Popen(
                ["ip", "netns", "exec", self.net.ns[host], sys.executable, "-m", "lockgate.cli", "worker"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                start_new_session=True,
            )

    def wait_ready(self, host: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs[host]
            assert proc.poll() is None, f"worker {host} exited: {self.tail(host)}"
            if "worker started" in self.log(host).read_text(errors="replace"):
                return
            time.sleep(0.3)
        raise AssertionError(f"worker {host} not ready: {self.tail(host)}")

    def kill(self, host: str) -> None:
        proc = self.procs[host]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop(self, host: str) -> None:
        proc = self.procs[host]
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def tail(self, host: str, n: int = 3000) -> str:
        return self.log(host).read_text(errors="replace")[-n:]

    def tails(self) -> str:
        return "\n".join(f"--- {h} ---\n{self.tail(h, 2500)}" for h in self.procs)

    def chaos_db(self) -> psycopg.Connection[Any]:
        dsn = self.env["LOCKGATE_PG_DSN"].replace("/shop?", "/chaos?")
        return psycopg.connect(dsn, autocommit=True)

    def db_now(self) -> Any:
        with self.chaos_db() as conn:
            row = conn.execute("SELECT clock_timestamp()").fetchone()
        assert row is not None
        return row[0]

    def restart_postgres(self) -> None:
        _commands = _embedded_postgres()._commands
        user = "embedded_postgres" if os.geteuid() == 0 else None
        _commands.pg_ctl(["-m", "fast", "-w", "restart"], pgdata=self.dev.pgdata, user=user, timeout=60)


def _listen_on_tcp(dev: DevStack, address: str) -> int:
    """Embedded PostgreSQL listens on its socket only: restart it listening on `address` too,
    with password auth for the bridge's hosts. Returns its port."""
    env = dev.env()
    with psycopg.connect(env["LOCKGATE_PG_DSN"], autocommit=True) as conn:
        row = conn.execute("SHOW port").fetchone()
    assert row is not None
    port = int(row[0])
    hba = dev.pgdata / "pg_hba.conf"
    hba.write_text(hba.read_text() + f"host all all {address.rsplit('.', 1)[0]}.0/24 scram-sha-256\n")
    socket_dir = env["LOCKGATE_PG_SOCKET_DIR"]
    dev.stop_postgres()
    _commands = _embedded_postgres()._commands
    user = "embedded_postgres" if os.geteuid() == 0 else None
    log = dev.pgdata / "tcp.log"
    _commands.pg_ctl(
        ["-w", "-o", f"-h {address} -p {port} -k {socket_dir}", "-l", str(log), "start"],
        pgdata=dev.pgdata,
        user=user,
        timeout=60,
    )
    return port


def _forwarder(address: str, port: int, temporal_port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.forward", address, str(port), "127.0.0.1", str(temporal_port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _policy_dir(target: Path) -> Path:
    target.mkdir()
    for item in (ROOT / "policies").iterdir():
        shutil.copy(item, target / item.name)
    shutil.copy(ROOT / "tests" / "policies" / "chaos-agent.cedar", target / "chaos-agent.cedar")
    with open(target / "schema.cedarschema", "a") as schema:
        schema.write((ROOT / "tests" / "policies" / "chaos-schema.cedarschema").read_text())
    return target


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.fail("the chaos scenarios need root and iproute2 (ip netns) to make their hosts")
    net = Net(HOSTS)
    try:
        net.up()
        yield net
    finally:
        net.down()


@pytest.fixture(scope="module")
async def cluster(net: Net, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    from lockgate import worker
    from lockgate.setup import migrate_ledger

    home = tmp_path_factory.mktemp("chaos")
    home.chmod(0o755)
    dev = DevStack(
        home / "state",
        temporal_port=free_port(),
        ui_port=free_port(),
        vault_port=free_port(),
        ui=False,
        agent_modules=AGENTS,
        vault_ip=net.vault,
    )
    cluster: Cluster | None = None
    deps: Any = None
    forward: subprocess.Popen[bytes] | None = None
    try:
        await asyncio.to_thread(dev.up)
        # Temporal stays on 127.0.0.1 (its dev server's services dial each other there); the
        # hosts reach it through a forwarder on the bridge (tests/support/forward.py).
        t_port = free_port()
        forward = _forwarder(net.temporal, t_port, dev.temporal_port)
        pg_port = await asyncio.to_thread(_listen_on_tcp, dev, net.pg)
        env = {**dev.env(), "PYTHONPATH": str(ROOT)}
        with psycopg.connect(env["LOCKGATE_PG_DSN"], autocommit=True) as conn:
            conn.execute("CREATE DATABASE ledger")
        ledger_url = f"postgresql+psycopg://postgres:{env['LOCKGATE_PG_PASSWORD']}@{net.pg}:{pg_port}/ledger"
        await asyncio.to_thread(migrate_ledger, ledger_url)
        policies = _policy_dir(home / "policies")
        shared = {
            "LOCKGATE_TEMPORAL_ADDRESS": f"{net.temporal}:{t_port}",
            "LOCKGATE_NAMESPACE": "default",
            "LOCKGATE_TASK_QUEUE": f"chaos-{net.tag}",
            "VAULT_ADDR": dev.vault_addr,
            "LOCKGATE_POLICY_DIR": str(policies),
            "LOCKGATE_LEDGER_URL": ledger_url,
            "LOCKGATE_AGENT_MODULES": AGENTS,
            "LOCKGATE_PAYLOAD_KEY": env["LOCKGATE_PAYLOAD_KEY"],
        }
        hold_dir = home / "hold"
        hold_dir.mkdir()
        keep = ("PATH", "HOME", "LANG", "TMPDIR")
        worker_env = {
            **{k: os.environ[k] for k in keep if k in os.environ},
            **shared,
            "PYTHONPATH": str(ROOT),
            "LOCKGATE_VAULT_ROLE_ID": env["LOCKGATE_VAULT_ROLE_ID"],
            "LOCKGATE_VAULT_SECRET_ID": env["LOCKGATE_VAULT_SECRET_ID"],
            "LOCKGATE_PG_HOST": net.pg,
            "LOCKGATE_PG_PORT": str(pg_port),
            "LOCKGATE_REAP_INTERVAL": "3",
            "LOCKGATE_DRAIN_SECONDS": "3",
            "CHAOS_HOLD_DIR": str(hold_dir),
        }
        test_env = {**env, **shared, "LOCKGATE_STATE_DIR": str(dev.state_dir)}
        test_env["LOCKGATE_TEMPORAL_ADDRESS"] = dev.temporal_address
        settings = load_settings(test_env)
        deps = await asyncio.to_thread(worker.build_deps, settings)
        client = await worker.connect(settings, deps.vault)
        erin = await asyncio.to_thread(login_userpass, dev.vault_addr, "erin", env["LOCKGATE_DEV_PASSWORD"])
        cluster = Cluster(
            net=net,
            dev=dev,
            home=home,
            env=test_env,
            worker_env=worker_env,
            client=client,
            erin=erin,
            outside=Outside(settings),
            hold_dir=hold_dir,
            deps=deps,
        )
        for host in HOSTS:
            cluster.start_worker(host)
        for host in HOSTS:
            await asyncio.to_thread(cluster.wait_ready, host)
        yield cluster
    finally:
        if cluster is not None:
            cluster.stop_all()
            if os.environ.get("LOCKGATE_CHAOS_LOGS"):  # keep the workers' logs for a look
                keep = Path(os.environ["LOCKGATE_CHAOS_LOGS"])
                keep.mkdir(parents=True, exist_ok=True)
                for log in home.glob("worker-*.log"):
                    shutil.copy(log, keep / log.name)
        if deps is not None:
            deps.ledger.dispose()
        if forward is not None:
            forward.terminate()
            forward.wait(10)
        dev.down()


# -- traffic ---------------------------------------------------------------------------------------
@dataclass
class Run:
    handle: WorkflowHandle[Any, Any]
    fails: bool
    started: float
    outcome: str = "running"  # "completed" | "failed: ..." | "timeout"


class Traffic:
    """Closed-loop lanes of chaos-agent runs until stopped; every third run fails at step 2."""

    def __init__(self, cluster: Cluster, name: str, lanes: int = 5) -> None:
        self.cluster, self.name, self.lanes = cluster, name, lanes
        self.runs: list[Run] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._n = 0

    async def _lane(self) -> None:
        while not self._stop.is_set():
            self._n += 1
            n, fails = self._n, self._n % 3 == 0
            steps = [
                {"tool": "chaos.write", "args": {"label": f"{self.name}-{n}-a"}},
                {"tool": "chaos.write", "args": {"label": f"{self.name}-{n}-b", "fail": fails}},
            ]
            await self.run(steps, fails)

    async def run(self, steps: list[dict[str, Any]], fails: bool, *, wait: bool = True) -> Run:
        handle = await start(
            self.cluster.client,
            self.cluster.worker_env["LOCKGATE_TASK_QUEUE"],
            "chaos-agent",
            {"steps": steps},
            run_id=f"chaos-{self.name}-{uuid.uuid4().hex[:8]}",
            session=self.cluster.erin,
        )
        run = Run(handle, fails, time.monotonic())
        self.runs.append(run)
        if wait:
            await self.settle(run)
        return run

    async def settle(self, run: Run, timeout: float = 90) -> None:
        try:
            err = await asyncio.wait_for(finish(run.handle), timeout)
        except TimeoutError:
            desc = await run.handle.describe()
            pending = [
                f"{a.activity_type.name} attempt {a.attempt} state {a.state} last failure {a.last_failure.message!r}"
                for a in desc.raw_description.pending_activities
            ]
            events = [
                f"{e.event_id} {e.event_time.ToDatetime():%H:%M:%S.%f} {EventType.Name(e.event_type)}"
                for e in (await run.handle.fetch_history()).events[-8:]
            ]
            run.outcome = f"timeout ({desc.status}; pending: {pending}; last events: {events})"
            return
        run.outcome = "completed" if err is None else f"failed: {err}"

    def begin(self) -> None:
        self._tasks = [asyncio.create_task(self._lane()) for _ in range(self.lanes)]

    async def end(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


# -- checks ----------------------------------------------------------------------------------------
def _rows(cluster: Cluster, sql: LiteralString, *args: Any) -> list[tuple[Any, ...]]:
    with cluster.chaos_db() as conn:
        return list(conn.execute(sql, args))


def check_runs(cluster: Cluster, runs: list[Run]) -> None:
    """Each run ended as designed; each step's effect exists once; each failed run's first step
    was undone exactly once and nothing else was undone."""
    assert runs, "no traffic ran"
    for run in runs:
        expected = "failed" if run.fails else "completed"
        assert run.outcome.startswith(expected), f"{run.handle.id}: {run.outcome}\n{cluster.tails()}"
        if run.fails:
            assert "fails by design" in run.outcome, f"{run.handle.id}: {run.outcome}"
        effects = _rows(
            cluster, "SELECT step, undone_at IS NOT NULL FROM effects WHERE run_id = %s ORDER BY step", run.handle.id
        )
        undos = _rows(cluster, "SELECT idempotency_key FROM undos WHERE idempotency_key LIKE %s", f"{run.handle.id}:%")
        if run.fails:
            assert len(effects) == 1 and effects[0][1] is True, f"{run.handle.id}: effects {effects}"
            assert len(undos) == 1, f"{run.handle.id}: undos {undos}"
        else:
            assert len(effects) == 2 and not any(u for _, u in effects), f"{run.handle.id}: effects {effects}"
            assert undos == [], f"{run.handle.id}: undone {undos}"
    twice = _rows(cluster, "SELECT idempotency_key, count(*) FROM effects GROUP BY 1 HAVING count(*) > 1")
    assert twice == [], f"effects written twice: {twice}"
    undone_twice = _rows(cluster, "SELECT idempotency_key, count(*) FROM undos GROUP BY 1 HAVING count(*) > 1")
    assert undone_twice == [], f"compensations done twice: {undone_twice}"


def check_clean(cluster: Cluster) -> None:
    """No lease, no dynamic role left; the shared ledger verifies."""
    cluster.outside.assert_nothing_leaked(within=30)
    verified = subprocess.run(
        [sys.executable, "-m", "lockgate.cli", "verify", "--json"],
        env={**cluster.worker_env, "LOCKGATE_STATE_DIR": str(cluster.home / "auditor")},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    body = json.loads(verified.stdout)
    assert body["intact"] is True and body["entries"] > 0, body


def check_survivors(cluster: Cluster, victim: str, since: Any, until: Any, at_least: int = 2) -> None:
    """What was done while `victim` was cut off (after the grace for work it had begun) was done
    by the other hosts."""
    rows = _rows(
        cluster,
        "SELECT host, count(*) FROM effects WHERE at > %s + make_interval(secs => %s) AND at < %s GROUP BY 1",
        since,
        GRACE_S,
        until,
    )
    by_host = dict(rows)
    assert victim not in by_host, f"{victim} wrote effects while cut off: {by_host}"
    assert sum(by_host.values()) >= at_least, f"the surviving hosts did little while {victim} was cut off: {by_host}"


async def cut_round(cluster: Cluster, name: str, server_ip: str, victim: str = "h1", seconds: float = 30) -> None:
    traffic = Traffic(cluster, name)
    traffic.begin()
    await asyncio.sleep(4)  # traffic on every host
    since = await asyncio.to_thread(cluster.db_now)
    cluster.net.cut(victim, server_ip)
    try:
        await asyncio.sleep(seconds)
        until = await asyncio.to_thread(cluster.db_now)
        await traffic.end()  # the runs in flight finish while the host is still cut off
    finally:
        cluster.net.heal(victim, server_ip)
    for host in HOSTS:
        assert cluster.procs[host].poll() is None, f"worker {host} exited: {cluster.tail(host)}"
    check_runs(cluster, traffic.runs)
    check_survivors(cluster, victim, since, until)
    await asyncio.to_thread(check_clean, cluster)


# -- the scenarios ---------------------------------------------------------------------------------
async def test_a_host_cut_off_from_vault(cluster: Cluster) -> None:
    """A host loses OpenBao mid-traffic (SCENARIOS.md 5 across hosts): it can lease nothing, so no
    tool runs there; the other hosts carry the runs; nothing leaks."""
    await cut_round(cluster, "vault", cluster.net.vault)


async def test_b_host_cut_off_from_postgres(cluster: Cluster) -> None:
    """A host loses PostgreSQL (the ledger and the tools' database) mid-traffic."""
    await cut_round(cluster, "pg", cluster.net.pg)


async def test_c_host_cut_off_from_temporal(cluster: Cluster) -> None:
    """A host loses Temporal mid-traffic: its activities time out (heartbeat) and run elsewhere;
    what it had begun is not done twice."""
    await cut_round(cluster, "temporal", cluster.net.temporal)


async def test_d_host_killed_mid_tool(cluster: Cluster) -> None:
    """SIGKILL of a host's worker while tools hold leases (SCENARIOS.md 1, 2 and 4 across hosts).
    Two runs hold at step 2 on the victim: one resumes on a surviving host and completes (the dead
    attempt's lease revoked, its effect written once); the other is terminated and the reaper of a
    surviving host compensates its step 1 and revokes what it held."""
    victim, others = "h1", [h for h in HOSTS if h != "h1"]
    traffic = Traffic(cluster, "kill")
    # Only the victim polls while the two runs start, so both hold there: the others stop (a cut
    # would leave their last long polls open on the server, and a task sent there is lost for its
    # timeout) and start again as soon as the victim holds both.
    for host in others:
        cluster.stop(host)
    try:
        steps = [
            {"tool": "chaos.write", "args": {"label": "kill-a"}},
            {"tool": "chaos.write", "args": {"label": "kill-b", "hold": True}},
        ]
        resumed, reaped = await asyncio.gather(
            traffic.run(steps, False, wait=False), traffic.run(steps, True, wait=False)
        )
        keys = {run.handle.id: f"{run.handle.id}:2" for run in (resumed, reaped)}
        deadline = time.monotonic() + 60
        while not all((cluster.hold_dir / f"{k}.reached").exists() for k in keys.values()):
            assert time.monotonic() < deadline, f"the runs never reached their hold: {cluster.tails()}"
            await asyncio.sleep(0.1)
        assert {(cluster.hold_dir / f"{k}.reached").read_text() for k in keys.values()} == {victim}
        await asyncio.sleep(1.5)  # the heartbeat carrying the lease id reaches the server
    finally:
        for host in others:
            cluster.start_worker(host)
    reached = [(cluster.hold_dir / f"{k}.reached").stat().st_mtime for k in keys.values()]
    cluster.kill(victim)
    try:
        # A hold lasts 8 s (under the heartbeat timeout): both attempts were still holding.
        assert time.time() - min(reached) < 8, "a hold ended before the kill: the machine is too slow for this scenario"
        for host in others:
            await asyncio.to_thread(cluster.wait_ready, host)
        for key in keys.values():
            (cluster.hold_dir / f"{key}.go").touch()
        await reaped.handle.terminate("chaos: the run's host died")
        background = Traffic(cluster, "kill-bg")
        background.begin()
        await traffic.settle(resumed)
        await asyncio.sleep(3)
        await background.end()
        reaped.outcome = "failed: terminated"

        # The resumed run: completed elsewhere; step 2 attempted on the victim and on a survivor.
        assert resumed.outcome == "completed", f"{resumed.outcome}\n{cluster.tails()}"
        attempts = _rows(
            cluster, "SELECT host FROM attempts WHERE idempotency_key = %s ORDER BY id", keys[resumed.handle.id]
        )
        assert attempts[0] == (victim,) and len(attempts) >= 2 and attempts[-1][0] in others, attempts
        check_runs(cluster, background.runs)
        # The dead attempt's lease was revoked by the next attempt (its id came in the heartbeat).
        issued = [e for e in ledger_events(cluster.deps, resumed.handle.id, "lease.issued") if e["step"] == 2]
        revoked = {e["lease_id"]: e["by"] for e in ledger_events(cluster.deps, resumed.handle.id, "lease.revoked")}
        assert [e["attempt"] for e in issued][:1] == [1] and len(issued) >= 2, issued
        assert revoked.get(issued[0]["lease_id"]) == "next-attempt", (issued, revoked)
        assert _rows(cluster, "SELECT step FROM effects WHERE run_id = %s ORDER BY step", resumed.handle.id) == [
            (1,),
            (2,),
        ]
        # The terminated run: its step 1 undone once by a surviving host's reaper, step 2 never written.
        deadline = time.monotonic() + 60
        while not _rows(cluster, "SELECT 1 FROM undos WHERE idempotency_key = %s", f"{reaped.handle.id}:1"):
            assert time.monotonic() < deadline, f"the terminated run was never reaped: {cluster.tails()}"
            await asyncio.sleep(0.5)
        effects = _rows(
            cluster, "SELECT step, undone_by FROM effects WHERE run_id = %s ORDER BY step", reaped.handle.id
        )
        assert len(effects) == 1 and effects[0][0] == 1 and effects[0][1] in others, effects
        assert len(_rows(cluster, "SELECT 1 FROM undos WHERE idempotency_key LIKE %s", f"{reaped.handle.id}:%")) == 1
        await asyncio.to_thread(check_clean, cluster)
    finally:
        cluster.start_worker(victim)
        await asyncio.to_thread(cluster.wait_ready, victim)


async def test_e_database_restarted_mid_traffic(cluster: Cluster) -> None:
    """PostgreSQL restarts (fast shutdown) under traffic: the ledger, the tools' database and
    OpenBao's database engine all lose their connections at once."""
    traffic = Traffic(cluster, "pgrestart")
    traffic.begin()
    await asyncio.sleep(4)
    await asyncio.to_thread(cluster.restart_postgres)
    await asyncio.sleep(8)
    await traffic.end()
    for host in HOSTS:
        assert cluster.procs[host].poll() is None, f"worker {host} exited: {cluster.tail(host)}"
    check_runs(cluster, traffic.runs)
    await asyncio.to_thread(check_clean, cluster)
