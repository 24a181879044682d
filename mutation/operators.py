"""Mutation operators of lockgate's own, beside Cosmic Ray's core ones: the mutants that switch a
control off rather than twist it. Cosmic Ray's operators replace an operator or a constant; they never
drop a check (`if wrong: raise ...` becomes `if False: ...`), a call made for its effect (a lease
revoked when the call ends) or a field a signed statement must bind (`expect={...}`)."""

from __future__ import annotations

from typing import Any

from cosmic_ray.operators.operator import Example, Operator
from parso.python.tree import Keyword

# Calls made only to log or trace: dropping one changes no decision (not mutated).
_QUIET_CALLS = ("log.", "logging.", "print(")


def _prefix(node: Any) -> str:
    return node.get_first_leaf().prefix if hasattr(node, "children") else node.prefix


def _false(like: Any) -> Keyword:
    return Keyword("False", like.start_pos, prefix=_prefix(like))


class DisableCheck(Operator):
    """`if cond:` / `elif cond:` -> `if False:`: the check never fires (the control is removed)."""

    def mutation_positions(self, node: Any) -> Any:  # Iterator[Position] (Cosmic Ray's base is unannotated)
        if node.type == "if_stmt":
            for i, child in enumerate(node.children):
                if child.type == "keyword" and child.value in ("if", "elif"):
                    test = node.children[i + 1]
                    yield (test.start_pos, test.end_pos)

    def mutate(self, node: Any, index: int) -> Any:
        tests = [i + 1 for i, c in enumerate(node.children) if c.type == "keyword" and c.value in ("if", "elif")]
        target = tests[index]
        node.children[target] = _false(node.children[target])
        return node

    @classmethod
    def examples(cls) -> Any:  # tuple[Example, ...]
        return (
            Example("if a:\n    x()\n", "if False:\n    x()\n"),
            Example("if a:\n    x()\nelif b:\n    y()\n", "if a:\n    x()\nelif False:\n    y()\n", occurrence=1),
        )


def _effect_call(stmt: Any) -> Any | None:
    """The call a simple statement consists of (`f(x)`, `await f(x)`, `self.a.b(x)`), or None."""
    expr = stmt.children[0]
    if expr.type != "atom_expr":
        return None
    last = expr.children[-1]
    if last.type != "trailer" or last.children[0].value != "(":
        return None
    if expr.get_code().strip().startswith(_QUIET_CALLS):
        return None
    return expr


class RemoveEffectCall(Operator):
    """A statement that is only a call (`vault.revoke(lease_id)`) -> `pass`: the effect never happens."""

    def mutation_positions(self, node: Any) -> Any:  # Iterator[Position] (Cosmic Ray's base is unannotated)
        if node.type == "simple_stmt" and len(node.children) == 2 and _effect_call(node) is not None:
            yield (node.children[0].start_pos, node.children[0].end_pos)

    def mutate(self, node: Any, index: int) -> Any:
        assert index == 0
        first = node.children[0]
        node.children[0] = Keyword("pass", first.start_pos, prefix=_prefix(first))
        return node

    @classmethod
    def examples(cls) -> Any:  # tuple[Example, ...]
        return (Example("def f():\n    vault.revoke(x)\n", "def f():\n    pass\n"),)


def _expect_entries(node: Any) -> list[tuple[int, int]]:
    """(first, last child index) of each `key: value` entry of an `expect={...}` keyword argument."""
    if node.type != "argument" or len(node.children) != 3 or node.children[0].value != "expect":
        return []
    atom = node.children[2]
    if atom.type != "atom" or atom.children[0].value != "{" or len(atom.children) != 3:
        return []
    body = atom.children[1]
    if body.type != "dictorsetmaker":
        return []
    kids = body.children
    return [(i, i + 2) for i in range(0, len(kids), 4) if i + 2 < len(kids) and kids[i + 1].value == ":"]


class DropBoundField(Operator):
    """One entry of `expect={...}` (what a signed statement must bind) dropped: that field is never compared."""

    def mutation_positions(self, node: Any) -> Any:  # Iterator[Position] (Cosmic Ray's base is unannotated)
        entries = _expect_entries(node)
        if not entries:
            return iter(())
        kids = node.children[2].children[1].children
        # Computed before any mutation: the visitor keeps iterating after it mutates this node.
        return iter([(kids[first].start_pos, kids[last].end_pos) for first, last in entries])

    def mutate(self, node: Any, index: int) -> Any:
        body = node.children[2].children[1]
        first, last = _expect_entries(node)[index]
        end = last + 2 if last + 1 < len(body.children) else last + 1  # with its trailing comma
        del body.children[first:end]
        return node

    @classmethod
    def examples(cls) -> Any:  # tuple[Example, ...]
        return (Example("f(expect={'a': 1, 'b': 2})\n", "f(expect={'b': 2})\n"),)


OPERATORS: dict[str, type[Operator]] = {
    "DisableCheck": DisableCheck,
    "RemoveEffectCall": RemoveEffectCall,
    "DropBoundField": DropBoundField,
}
