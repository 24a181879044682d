"""What a Temporal history carries: every payload found in its protobuf messages, decoded."""

from __future__ import annotations

from typing import Any

from temporalio.api.common.v1 import Payload

__all__ = ["decoded_payloads"]


def decoded_payloads(messages: Any) -> list[str]:
    """Every Payload's data, decoded, found anywhere inside the given protobuf messages."""
    out: list[str] = []

    def walk(msg: Any) -> None:
        if isinstance(msg, Payload):
            out.append(msg.data.decode("utf-8", "replace"))
            out.extend(v.decode("utf-8", "replace") for v in msg.metadata.values())
            return
        for field, value in msg.ListFields():
            if field.type != field.TYPE_MESSAGE:
                continue
            repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
            if repeated:
                items = value.values() if hasattr(value, "values") and callable(value.values) else value
                for item in items:
                    if hasattr(item, "ListFields"):
                        walk(item)
            else:
                walk(value)

    for m in messages:
        walk(m)
    return out
