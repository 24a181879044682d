"""Gates: pure decision logic. No clock, environment, network or files: everything is an argument."""

from lockgate.gates.bundle import PolicyBundle, PolicyStatement, split_statements
from lockgate.gates.engine import Verdict, cedar_context, evaluate, tool_entities

__all__ = [
    "PolicyBundle",
    "PolicyStatement",
    "Verdict",
    "cedar_context",
    "evaluate",
    "split_statements",
    "tool_entities",
]
