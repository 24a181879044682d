"""Operator commands import no agent module (issue 33.5): `status`, `pending`, `approve`, `audit`,
`verify`, `halt`, `whoami` run without importing LOCKGATE_AGENT_MODULES (and so without the agent
frameworks those import); the commands that use the agents still load them."""

from __future__ import annotations

from pathlib import Path

from tests.support.stack import as_person, cli

CANARY = """
import os
from pathlib import Path

Path(os.environ["CANARY_FILE"]).write_text("imported")
import pydantic_ai  # noqa: E402,F401 - what a real drop-in module costs
"""


def _canary(tmp_path: Path, env: dict[str, str]) -> tuple[dict[str, str], Path]:
    (tmp_path / "import_canary.py").write_text(CANARY)
    marker = tmp_path / "imported"
    return {
        **env,
        "PYTHONPATH": f"{tmp_path}:{env['PYTHONPATH']}",
        "LOCKGATE_AGENT_MODULES": f"{env['LOCKGATE_AGENT_MODULES']},import_canary",
        "CANARY_FILE": str(marker),
    }, marker


async def test_operator_commands_import_no_agent_module(env: dict[str, str], tmp_path: Path) -> None:
    canary_env, marker = _canary(tmp_path, env)
    person = as_person(canary_env, "carol")
    for args in (
        ["status", "no-such-run"],
        ["pending", "--json"],
        ["approve", "no-such-run", "1.1"],
        ["reject", "no-such-run", "1.1"],
        ["audit", "no-such-run"],
        ["verify", "--json"],
        ["halt", "no-such-run"],
        ["whoami"],
    ):
        result = await cli(person, *args)
        assert result.returncode in (0, 1, 2), (args, result.stderr)
        assert "Traceback" not in result.stderr, (args, result.stderr)
        assert not marker.exists(), f"lockgate {' '.join(args)} imported the agent modules"


async def test_commands_that_use_the_agents_still_load_them(env: dict[str, str], tmp_path: Path) -> None:
    canary_env, marker = _canary(tmp_path, env)
    for args in (["policy", "check"], ["freeze", "--agent", "no-such-agent"]):
        marker.unlink(missing_ok=True)
        result = await cli(as_person(canary_env, "carol"), *args)
        assert marker.exists(), (args, result.stdout, result.stderr)
    # and an unknown agent is still told apart from a known one
    unknown = await cli(as_person(canary_env, "carol"), "freeze", "--agent", "no-such-agent")
    assert unknown.returncode == 2 and "unknown agent" in unknown.stderr
