"""What an approval card shows of a request's arguments: every value the digest covers, in full.

A value is never cut: a long one is folded (the page holds all of it, the reader expands it). Only
arguments the tool declares secret (`lockgate.shown(secret=GROUP)`) are withheld, and the card says by
whom they may be seen. A declared display (money, ids, units) is shown beside the raw value, never
instead of it. When nothing is withheld the inbox recomputes the digest from exactly the values it
shows, so a card can only offer to sign what it displays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from lockgate.models import ApprovalRequest, args_digest, canonical_json
from lockgate.spec import Tool, field_display

__all__ = ["FOLD_AT", "Effect", "ShownArg", "digest_shown", "earlier_effects", "render_value", "shown_args"]

# Values longer than this (or spanning lines) are folded into an expandable element, in full.
FOLD_AT = 120


@dataclass(frozen=True)
class ShownArg:
    """One argument as the card shows it."""

    name: str
    # The value exactly as the digest covers it (strings as they are, anything else as canonical JSON).
    text: str = ""
    # The tool's declared reading of the value (`250.00 EUR`, `3 hosts`), shown beside `text`.
    rendered: str | None = None
    # What kind of id the value is, and a link to it (from the tool's declaration only).
    id_of: str | None = None
    link: str | None = None
    # Set when the tool declares the value secret: the group that may see it.
    withheld: str | None = None

    @property
    def folded(self) -> bool:
        return len(self.text) > FOLD_AT or "\n" in self.text

    @property
    def head(self) -> str:
        return self.text[:FOLD_AT]


def _money(value: Any, currency: str, minor_units: int) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    amount = Decimal(value).scaleb(-minor_units)
    return f"{amount:,.{minor_units}f} {currency}"


def _render(value: Any, declared: dict[str, Any]) -> str | None:
    if declared.get("money"):
        return _money(value, str(declared["money"]), int(declared.get("minor_units", 2)))
    if declared.get("unit") and isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value} {declared['unit']}"
    return None


def render_value(value: Any, declared: dict[str, Any]) -> str:
    """One value as a short summary shows it: its declared reading, or the value itself."""
    return _render(value, declared) or (value if isinstance(value, str) else canonical_json(value))


def shown_args(req: ApprovalRequest, tool: Tool | None) -> list[ShownArg]:
    """Every argument of `req` as the card shows it, sorted by name; withheld ones say by whom."""
    display = field_display(tool.args if tool else None)
    rows: list[ShownArg] = []
    for name, value in req.args.items():
        declared = display.get(name, {})
        text = value if isinstance(value, str) else canonical_json(value)
        link = None
        if declared.get("link") and isinstance(value, (str, int)):
            link = str(declared["link"]).replace("{}", quote(str(value), safe=""))
        rows.append(ShownArg(name, text, _render(value, declared), declared.get("id_of"), link))
    for name, group in req.withheld.items():
        rows.append(ShownArg(name, withheld=group))
    return sorted(rows, key=lambda r: r.name)


def digest_shown(req: ApprovalRequest) -> bool | None:
    """Whether the request's digest is the digest of exactly the arguments shown; None when some are
    withheld (then the card cannot check it, and says so)."""
    if req.withheld:
        return None
    return args_digest(req.args) == req.args_digest


@dataclass(frozen=True)
class Effect:
    """An earlier step of the run that acted on the same resource as the request."""

    step: int
    tool: str
    amount: str | None
    undone: bool


def earlier_effects(
    events: list[dict[str, Any]], tool: Tool | None, args: dict[str, Any], spec_of: Callable[[str], Tool | None]
) -> tuple[str | None, list[Effect]]:
    """The resource the request acts on (`Order A-1002`) and what the run's completed steps already
    did to it, from the run's ledger (each completion joined to the decision that allowed it)."""
    target = tool.resource_of(args) if tool else None
    if target is None:
        return None, []
    decisions = {str(e.get("decision_id")): e for e in events if e.get("kind") == "decision"}
    undone = {str(e.get("compensates")) for e in events if e.get("kind") == "tool.completed" and e.get("compensates")}
    out: list[Effect] = []
    for e in events:
        if e.get("kind") != "tool.completed" or e.get("compensates"):
            continue
        call = ((decisions.get(str(e.get("decision_id"))) or {}).get("request") or {}).get("call") or {}
        spec = spec_of(str(call.get("tool", e.get("tool"))))
        done_args = dict(call.get("args") or {})
        if spec is None or spec.resource_of(done_args) != target:
            continue
        amount = None
        if spec.cost_arg:
            value = done_args.get(spec.cost_arg)
            declared = field_display(spec.args).get(spec.cost_arg, {})
            amount = _render(value, declared) or str(value)
        key = str(e.get("idempotency_key") or "")
        out.append(Effect(int(e.get("step", 0)), spec.name, amount, bool(key) and key in undone))
    return f"{target[0]} {target[1]}", out
