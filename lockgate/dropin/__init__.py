"""Govern the agents teams already run: Pydantic AI and OpenAI Agents on Temporal, and plain activities.

Add `LockgatePlugin(govern=[...])` beside `PydanticAIPlugin` or `OpenAIAgentsPlugin` and declare, per
tool, what lockgate needs; the agent code stays as it is::

    from lockgate.dropin import Govern, Governance, current_secret

    GOVERNANCE = Governance(
        "support_agent",                      # the framework's agent name(s): Cedar principals
        owner="support-platform",
        tools={
            "customer_balance": Govern(secret=BANK_READER),
            "block_card": Govern(production=True, compensation=unblock_card, on_deny="retry"),
        },
    )
    client = await Client.connect(..., plugins=[PydanticAIPlugin(), LockgatePlugin(govern=[GOVERNANCE])])

Every call of those agents' tools is then gated by Cedar (same bundle as lockgate's own agents),
waits for approval when policy says so (`lockgate pending` / `approve`), runs with its just-in-time
secret (`current_secret()` inside the tool), lands in the ledger, and is compensated on failure,
halt or (via the reaper) terminate. A denial fails the run unless the tool or the deciding policy
(`@denial("retry")`) says to hand it back to the model.
"""

from __future__ import annotations

from lockgate.dropin.activity import NoSecret, current_call, current_secret
from lockgate.dropin.models import PATCH_ID
from lockgate.dropin.spec import DENIAL_DEFAULT, Denial, Govern, Governance, OpenArgs, args_of, slug

__all__ = [
    "DENIAL_DEFAULT",
    "PATCH_ID",
    "Denial",
    "Govern",
    "Governance",
    "NoSecret",
    "OpenArgs",
    "args_of",
    "current_call",
    "current_secret",
    "slug",
]
