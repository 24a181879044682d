"""A lane's shared stack: `python -m mutation.stack DIR` starts the test suite's servers (Temporal dev
server, OpenBao, PostgreSQL: tests/conftest.py's stack, same agents and policies) in DIR, prints
`ready` and keeps them until its standard input closes, then stops them.

Each mutant's pytest session of that lane runs with LOCKGATE_TEST_SHARED_STACK=DIR and uses those
servers instead of starting its own (about a third of a real-stack mutant's time): a fresh task queue,
worker and ledger per session, as tests/conftest.py's `local` fixture documents. The servers run
unmutated code only (Temporal, OpenBao, PostgreSQL and the bootstrap, started from the repository,
not the lane).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import examples.report_agent  # noqa: F401 - the README's example agent, as tests/conftest.py
import tests.agents  # noqa: F401 - the test agents, registered before Vault is bootstrapped
from lockgate.testing import LocalStack
from tests.support.stack import AGENT_MODULES, compose_policies


def main(argv: list[str]) -> int:
    base = Path(argv[0])
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)  # embedded PostgreSQL runs as its own user when the runner is root
    policies = compose_policies(Path(tempfile.mkdtemp(prefix="policies-", dir=base)))
    with LocalStack(agent_modules=AGENT_MODULES, policy_dir=policies, base_dir=base / "stack") as stack:
        print(f"ready {stack.base_dir}", flush=True)
        sys.stdin.read()  # until the runner closes it (or dies)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
