"""How `LockgatePlugin(govern=...)` wires drop-in governance into a worker or a replayer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from temporalio.worker import Interceptor, WorkerConfig

from lockgate.dropin.activity import DropinActivities
from lockgate.dropin.interceptor import DropinIndex, DropinInterceptor
from lockgate.dropin.spec import Governance
from lockgate.errors import PolicyError

if TYPE_CHECKING:
    from lockgate.worker import Deps

__all__ = ["configure_dropin", "ensure_agents", "replay_interceptor"]


def ensure_agents(deps: Deps, governances: Sequence[Governance]) -> None:
    """Adds the governed apps' agents to the worker's registry (and their tools to the bundle's
    entities). Their Vault policy is provisioned by `lockgate dev up` / the deployment, from
    `LOCKGATE_AGENT_MODULES`, like any agent's."""
    missing = [a for gov in governances for a in gov.lockgate_agents if deps.agents.get(a.name) is None]
    if missing:
        deps.agents.extend(missing)
        problems = deps.reload_policies()
        if problems:
            # Never govern with a bundle that does not know these agents' tools.
            raise PolicyError(problems)


def configure_dropin(
    config: WorkerConfig, deps: Deps, governances: Sequence[Governance]
) -> tuple[WorkerConfig, DropinIndex]:
    from lockgate.dropin.check import check_mcp_servers, check_tool_names
    from lockgate.worker import build_governance, tool_resources

    for gov in governances:
        # A typo in `tools` fails the worker's start, naming it (not each call, at run time).
        check_tool_names(gov, config.get("activities") or (), config.get("plugins") or ())
        check_mcp_servers(gov, config.get("activities") or (), config.get("plugins") or ())
    ensure_agents(deps, governances)
    index = DropinIndex(governances)
    acts = DropinActivities(
        governance=build_governance(deps),
        agents=deps.agents,
        vault=deps.vault,
        ledger=deps.ledger,
        bundle=deps.current_bundle,
        denials=index.denials(),
        resources=tool_resources(deps.settings),
        governed=frozenset(a.name for a in index.agents()),
        summarize=index.summarize,
        unsigned=frozenset(a.name for gov in governances if gov.unsigned_starts for a in gov.lockgate_agents),
    )
    config["activities"] = [*(config.get("activities") or ()), acts.open_run, acts.gate]
    interceptors: list[Any] = [*(config.get("interceptors") or ()), DropinInterceptor(index, acts)]
    config["interceptors"] = interceptors
    return config, index


def replay_interceptor(governances: Sequence[Governance]) -> Interceptor:
    """The workflow half alone: a replayer runs no activity."""
    return DropinInterceptor(DropinIndex(governances), None)  # type: ignore[arg-type]  # activities never run in replay
