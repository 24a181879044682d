"""Grants: proof, checked by every tool activity, that the gate allowed exactly this call.

A grant is an HMAC (key held in Vault, read by workers at start) over the run, step, tool, args
digest and decision id. A tool activity started any other way — a raw `execute_activity` by a
workflow author, or a replay of someone else's grant — has no valid grant and does not run.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from lockgate.models import canonical_json

__all__ = ["GrantSigner", "GrantError"]


class GrantError(Exception):
    pass


class GrantSigner:
    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("grant key too short")
        self._key = key

    def _mac(self, payload: bytes) -> str:
        return hmac.new(self._key, payload, hashlib.sha256).hexdigest()

    @staticmethod
    def _payload(run_id: str, step: int, tool: str, digest: str, decision_id: str) -> bytes:
        return canonical_json(
            {"run": run_id, "step": step, "tool": tool, "digest": digest, "decision": decision_id}
        ).encode()

    def sign(self, run_id: str, step: int, tool: str, digest: str, decision_id: str) -> str:
        payload = self._payload(run_id, step, tool, digest, decision_id)
        return "g1." + base64.urlsafe_b64encode(payload).decode() + "." + self._mac(payload)

    def verify(self, grant: str, *, run_id: str, step: int, tool: str, digest: str, decision_id: str) -> None:
        """Raises GrantError unless `grant` was signed for exactly this call."""
        try:
            version, encoded, mac = grant.split(".")
            payload = base64.urlsafe_b64decode(encoded.encode())
        except (ValueError, TypeError) as err:
            raise GrantError("malformed grant") from err
        if version != "g1" or not hmac.compare_digest(mac, self._mac(payload)):
            raise GrantError("grant signature invalid")
        if payload != self._payload(run_id, step, tool, digest, decision_id):
            raise GrantError("grant was issued for another call")
