"""Typed wrappers of the few raw hvac calls lockgate makes (hvac returns `Response | dict` untyped).

hvac answers a JSON body as a dict and an empty body (204) as a Response; these return the dict, or
an empty dict for no body, so callers index one type.
"""

from __future__ import annotations

from typing import Any

import hvac

__all__ = ["body", "post", "read", "write"]


def body(resp: Any) -> dict[str, Any]:
    """The JSON body of an hvac answer ({} when there is none)."""
    if resp is None:
        return {}
    if isinstance(resp, dict):
        return resp
    try:
        parsed = resp.json()
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def read(client: hvac.Client, path: str) -> dict[str, Any] | None:
    """`vault read PATH`: the body, or None when nothing is there."""
    resp = client.read(path)
    return body(resp) if resp is not None else None


def write(client: hvac.Client, path: str, **data: Any) -> dict[str, Any]:
    """`vault write PATH k=v ...`: the body ({} for none)."""
    return body(client.write_data(path, data=data))


def post(client: hvac.Client, url: str, payload: dict[str, Any]) -> dict[str, Any]:
    """A raw POST to `/v1/...`: the body ({} for none)."""
    return body(client.adapter.post(url, json=payload))
