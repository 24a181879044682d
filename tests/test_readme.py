"""The README's authoring walkthrough, as a newcomer would type it (on the session's stack)."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from tests.support.stack import ROOT, as_person, cli


def test_readme_shows_the_example_files_verbatim() -> None:
    readme = (ROOT / "README.md").read_text()
    for path in ("examples/report_agent.py", "examples/policies/report-agent.cedar"):
        assert (ROOT / path).read_text() in readme, f"README is out of date with {path}"


def test_every_command_in_the_readme_exists() -> None:
    from lockgate.cli import build_parser

    commands = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    used = {m for block in blocks for m in re.findall(r"^lockgate ([a-z][a-z-]*)", block, re.M)}
    assert used and used <= commands, used - commands


async def test_the_walkthrough(env: dict[str, str], worker_running: str) -> None:
    started = await cli(as_person(env, "erin"), "run", "report-agent", "--input", '{"status": "all"}')
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.strip()
    mine: list[dict[str, Any]] = []
    for _ in range(100):
        pending = json.loads((await cli(as_person(env, "alice"), "pending", "--json")).stdout)
        mine = [p for p in pending if p["run_id"] == run_id]
        if mine:
            break
        await asyncio.sleep(0.2)
    assert mine and (mine[0]["request_id"], mine[0]["tool"], mine[0]["group"]) == ("1.1", "orders.count", "finance")
    approved = await cli(as_person(env, "alice"), "approve", run_id, "1.1", "--reason", "weekly report")
    assert approved.returncode == 0, approved.stderr
    status: dict[str, Any] = {}
    for _ in range(100):
        status = json.loads((await cli(env, "status", run_id, "--json")).stdout)
        if status["state"] == "completed":
            break
        await asyncio.sleep(0.2)
    assert status["state"] == "completed" and re.fullmatch(r"\d+ orders \(all\)", status["steps"][0]["summary"])
    audit = await cli(env, "audit", run_id)
    assert audit.returncode == 0
    for needle in ("report-agent.all-needs-finance", "approve by alice accepted", "lease issued", "lease revoked"):
        assert needle in audit.stdout, needle


def test_the_dropin_section_matches_the_example() -> None:
    """The README's "Govern your existing agent" snippet runs (its declaration, with the example's
    tools and secrets) and declares what the example governs on the real stack in
    tests/test_dropin_pydantic_ai.py; the names it uses are lockgate's public surface."""
    import lockgate.dropin
    from examples import pydantic_ai_agent

    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Govern your existing agent", 1)[1].split("\n## ", 1)[0]
    for name in ("Govern", "Governance", "args_of", "current_call", "current_secret", "PATCH_ID"):
        assert hasattr(lockgate.dropin, name), name
    assert f'workflow.patched("{lockgate.dropin.PATCH_ID}")' in section
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    declaration, plugin_line = code.split("\nclient = ", 1)
    assert "LockgatePlugin(govern=[GOVERNANCE])" in plugin_line
    scope = dict(vars(pydantic_ai_agent))
    exec(compile(declaration, "README.md", "exec"), scope)  # noqa: S102 - our own README's snippet
    ran, example = scope["GOVERNANCE"], pydantic_ai_agent.GOVERNANCE
    assert (ran.agents, ran.owner, set(ran.tools)) == (example.agents, example.owner, set(example.tools))
    for name, meta in example.tools.items():
        got = ran.tools[name]
        assert got.model_dump(exclude={"args"}) == meta.model_dump(exclude={"args"}), name
        assert got.args.model_json_schema()["properties"] == meta.args.model_json_schema()["properties"], name
