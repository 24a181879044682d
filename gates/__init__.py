"""Gates: pure decision logic. No clock, environment, network or files: everything is an argument."""

from gates.bundle import PolicyBundle, PolicyStatement, split_statements
from gates.engine import Verdict, cedar_context, evaluate, tool_entities

__all__ = [
    "PolicyBundle",
    "PolicyStatement",
    "split_statements",
    "Verdict",
    "cedar_context",
    "evaluate",
    "tool_entities",
]
