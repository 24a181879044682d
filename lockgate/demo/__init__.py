"""The demo: its two agents (`lockgate.demo.shop`: refund-agent, `lockgate.demo.incident`:
incident-agent) and the story `lockgate demo` walks through (`lockgate.demo.story`).

None of this is loaded by a worker unless configured (`LOCKGATE_AGENT_MODULES`); `lockgate dev up`
configures the dev stack with the demo agents.
"""

DEMO_AGENT_MODULES = "lockgate.demo.shop,lockgate.demo.incident"

__all__ = ["DEMO_AGENT_MODULES"]
