"""What people sign: statements binding one human act to exactly what it is about (pure; no I/O).

A person signs a `Statement` with their own Vault Transit key (only they can use it: a templated
ACL); the worker verifies the signature with the public key, offline. Only evidence enters history:
never a token or a password.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Act", "SignedStatement", "Statement", "VerifiedAct"]

Act = Literal["start", "approve", "reject", "halt", "freeze", "unfreeze"]
Scalar = str | int | bool | None


class Statement(BaseModel):
    """One human act and what it binds (run, Temporal run, request, decision, tool, args digest...)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    act: Act
    person: str = Field(min_length=1, max_length=128)
    at: datetime
    nonce: str = Field(min_length=8, max_length=64)
    fields: dict[str, Scalar] = Field(default_factory=dict)

    def canonical_bytes(self) -> bytes:
        """The one form that is signed: canonical JSON (as every digest in lockgate), UTC time."""
        from lockgate.models import canonical_json  # models imports this module at its end

        return canonical_json(self.model_dump(mode="json")).encode()

    def digest(self) -> str:
        return hashlib.sha256(self.canonical_bytes()).hexdigest()


class SignedStatement(BaseModel):
    """A statement with the person's Transit signature (`vault:v<N>:<base64>`) and key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    statement: Statement
    key: str
    key_version: int = Field(ge=1)
    signature: str = Field(max_length=512)


class VerifiedAct(BaseModel):
    """A statement the worker verified: who, in which groups at that moment, did what."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    person: str
    groups: tuple[str, ...]
    act: Act
    fields: dict[str, Scalar]
    at: datetime
    evidence: str  # the statement's digest
