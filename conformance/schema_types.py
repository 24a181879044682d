"""Cedar's schema-directed reading of a request's `context`, done ahead of time.

Cedar's own test harness parses each request's context with the schema: a string where the schema
says `ipaddr` becomes an `ip(...)` value, `{"type": .., "id": ..}` where it says an entity type
becomes an entity reference. lockgate evaluates without a schema, on explicit Cedar JSON, so the
conformance run writes each context in that explicit form first (`__extn`, `__entity`). This module
reads only what that needs from a Cedar schema in the human format: namespaces, common types,
entity type names and each action's context type. (Entities need none of it: Cedar itself writes
them back in explicit form, see conformance/run.py.)

A mistake here cannot hide a lockgate difference: plain Cedar is run on the untouched request with
the schema, so a context typed wrongly shows up as a difference.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ContextTypes"]

_TOKEN = re.compile(
    r"""(?P<skip>\s+|//[^\n]*)
      |(?P<str>"(?:[^"\\]|\\.)*")
      |(?P<path>[A-Za-z_][A-Za-z0-9_]*(?:::[A-Za-z_][A-Za-z0-9_]*)*)
      |(?P<punct>::|[{}\[\]<>(),;:=?@])""",
    re.X,
)
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", "0": "\0", "'": "'", '"': '"'}
_EXTENSIONS = {"ipaddr": "ip", "decimal": "decimal", "datetime": "datetime", "duration": "duration"}
_PRIMITIVES = {"Long", "String", "Bool", "Boolean"}

# A type: ("record", {attr: type}), ("set", type), or ("name", path, namespace it was written in).
Type = tuple[Any, ...]


class SchemaSyntaxError(ValueError):
    pass


@dataclass(frozen=True)
class _Tok:
    kind: str  # "str", "path" or "punct"
    text: str


def _unquote(literal: str) -> str:
    out: list[str] = []
    i, body = 0, literal[1:-1]
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt == "u":
            end = body.index("}", i)
            out.append(chr(int(body[i + 3 : end], 16)))
            i = end + 1
        else:
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
    return "".join(out)


def _tokens(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise SchemaSyntaxError(f"unexpected character {text[pos]!r} at offset {pos}")
        pos = m.end()
        kind = m.lastgroup or "skip"
        if kind != "skip":
            out.append(_Tok(kind, m.group()))
    return out


@dataclass
class _Parser:
    toks: list[_Tok]
    i: int = 0
    common: dict[str, tuple[Type, str]] = field(default_factory=dict)  # full name -> (type, its namespace)
    entity_types: set[str] = field(default_factory=set)
    contexts: dict[tuple[str, str], Type] = field(default_factory=dict)  # action uid -> context type

    def peek(self) -> str | None:
        return self.toks[self.i].text if self.i < len(self.toks) else None

    def take(self) -> _Tok:
        if self.i >= len(self.toks):
            raise SchemaSyntaxError("unexpected end of schema")
        self.i += 1
        return self.toks[self.i - 1]

    def expect(self, text: str) -> None:
        tok = self.take()
        if tok.text != text:
            raise SchemaSyntaxError(f"expected {text!r}, found {tok.text!r}")

    def name(self) -> str:
        tok = self.take()
        return _unquote(tok.text) if tok.kind == "str" else tok.text

    def annotations(self) -> None:
        while self.peek() == "@":
            self.take()
            self.take()
            if self.peek() == "(":
                self.take()
                self.take()
                self.expect(")")

    def skip_to(self, *stops: str) -> None:
        """Past balanced brackets, up to (not past) one of `stops` at depth 0."""
        depth = 0
        while True:
            tok = self.peek()
            if tok is None:
                raise SchemaSyntaxError(f"expected one of {stops}")
            if depth == 0 and tok in stops:
                return
            if tok in "{[<(":
                depth += 1
            elif tok in "}]>)":
                depth -= 1
            self.take()

    def schema(self) -> None:
        while self.peek() is not None:
            self.annotations()
            if self.peek() == "namespace":
                self.take()
                ns = self.take().text
                self.expect("{")
                while self.peek() != "}":
                    self.decl(ns)
                self.expect("}")
            else:
                self.decl("")

    def decl(self, ns: str) -> None:
        self.annotations()
        keyword = self.take().text
        qualify = (lambda n: f"{ns}::{n}") if ns else (lambda n: n)
        if keyword == "entity":
            self.entity_types.add(qualify(self.take().text))
            while self.peek() == ",":
                self.take()
                self.entity_types.add(qualify(self.take().text))
            self.skip_to(";")
        elif keyword == "type":
            name = self.take().text
            self.expect("=")
            self.common[qualify(name)] = (self.type(ns), ns)
        elif keyword == "action":
            names = [self.name()]
            while self.peek() == ",":
                self.take()
                names.append(self.name())
            self.skip_to("appliesTo", ";")
            if self.peek() == "appliesTo":
                self.take()
                self.expect("{")
                while self.peek() != "}":
                    key = self.take().text
                    self.expect(":")
                    if key == "context":
                        context = self.type(ns)
                        for name in names:
                            self.contexts[(qualify("Action"), name)] = context
                    else:
                        self.skip_to(",", "}")
                    if self.peek() == ",":
                        self.take()
                self.expect("}")
            self.skip_to(";")
        else:
            raise SchemaSyntaxError(f"unexpected {keyword!r}")
        self.expect(";")

    def type(self, ns: str) -> Type:
        if self.peek() == "{":
            self.take()
            attrs: dict[str, Type] = {}
            while self.peek() != "}":
                self.annotations()
                attr = self.name()
                if self.peek() == "?":
                    self.take()
                self.expect(":")
                attrs[attr] = self.type(ns)
                if self.peek() == ",":
                    self.take()
            self.expect("}")
            return ("record", attrs)
        path = self.take().text
        if path == "Set" and self.peek() == "<":
            self.take()
            element = self.type(ns)
            self.expect(">")
            return ("set", element)
        return ("name", path, ns)


class ContextTypes:
    """The context type of each action a schema declares, and the explicit form of a context."""

    def __init__(self, schema_text: str | None) -> None:
        self._parser = _Parser([])
        if schema_text and not schema_text.lstrip().startswith("{"):  # JSON schemas: not needed yet
            self._parser = _Parser(_tokens(schema_text))
            self._parser.schema()

    def explicit(self, action: tuple[str, str], context: Any) -> Any:
        """`context` as Cedar reads it for `action` with the schema, in explicit Cedar JSON."""
        declared = self._parser.contexts.get(action)
        return context if declared is None else self._typed(context, declared)

    def _resolve(self, t: Type) -> Type:
        """A name as Cedar resolves it: common type, then entity type, in the namespace it was
        written in and then the empty one; then primitive or extension types."""
        seen = 0
        while t[0] == "name":
            path, ns = t[1], t[2]
            if path.startswith("__cedar::"):
                path = path.removeprefix("__cedar::")
                return ("ext", _EXTENSIONS[path]) if path in _EXTENSIONS else ("prim",)
            candidates = [path] if "::" in path else ([f"{ns}::{path}"] if ns else []) + [path]
            for full in candidates:
                if full in self._parser.common:
                    t = self._parser.common[full][0]
                    break
                if full in self._parser.entity_types:
                    return ("entity", full)
            else:
                if path in _EXTENSIONS:
                    return ("ext", _EXTENSIONS[path])
                return ("prim",) if path in _PRIMITIVES else ("unknown", path)
            seen += 1
            if seen > 64:
                raise SchemaSyntaxError("common types refer to each other in a cycle")
        return t

    def _typed(self, value: Any, t: Type) -> Any:
        t = self._resolve(t)
        kind = t[0]
        escaped = isinstance(value, dict) and ("__entity" in value or "__extn" in value)
        if kind == "ext" and isinstance(value, str):
            return {"__extn": {"fn": t[1], "arg": value}}
        if kind == "entity" and isinstance(value, dict) and not escaped and set(value) == {"type", "id"}:
            return {"__entity": value}
        if kind == "record" and isinstance(value, dict) and not escaped:
            attrs = t[1]
            return {k: self._typed(v, attrs[k]) if k in attrs else v for k, v in value.items()}
        if kind == "set" and isinstance(value, list):
            return [self._typed(v, t[1]) for v in value]
        return value
