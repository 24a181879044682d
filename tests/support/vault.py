"""Typed reads of Vault for tests (hvac's `read` is untyped: `Response | dict | None`)."""

from __future__ import annotations

from typing import Any

import hvac

from lockgate import vaultio

__all__ = ["read_data"]


def read_data(client: hvac.Client, path: str) -> dict[str, Any]:
    """`vault read PATH`'s `data` (the test fails when nothing is there)."""
    found = vaultio.read(client, path)
    assert found is not None, f"nothing at {path}"
    return found["data"]
