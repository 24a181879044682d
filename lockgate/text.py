"""Untrusted text, shown safely: names, reasons, args, tool results and model output come from people,
agents and tools, and reach terminals, Markdown and HTML. Control characters (which can rewrite a
terminal's lines), bidirectional overrides (which can reorder what a reader sees) and excessive length
are neutralised everywhere text is shown.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["MAX_SHOWN", "host_of", "redact_url", "safe", "safe_json", "safe_md"]

MAX_SHOWN = 300

# C0 and C1 controls, DEL, and the Unicode bidi controls and line/paragraph separators.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group(0))
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe(value: Any, limit: int = MAX_SHOWN) -> str:
    """One line of text safe to print: controls escaped (`\\x1b`, `\\u202e`), cut at `limit`."""
    text = value if isinstance(value, str) else str(value)
    text = _UNSAFE.sub(_escape, text)
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def safe_json(value: Any, limit: int = MAX_SHOWN) -> str:
    """Compact JSON of a value, safe to print (JSON escapes controls; bidi marks are escaped too)."""
    return safe(json.dumps(value, sort_keys=True, ensure_ascii=False, default=str), limit)


_MD = re.compile(r"([\\`*_\[\]<>|~])")


def safe_md(value: Any, limit: int = MAX_SHOWN) -> str:
    """`safe` plus Markdown/HTML metacharacters escaped, for Markdown reports."""
    return _MD.sub(r"\\\1", safe(value, limit)).replace("&", "&amp;")


def redact_url(url: str) -> str:
    """A database URL or DSN as it may be shown or logged: its password replaced by `***`."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return re.sub(r"://[^/@\s]*@", "://***@", url)


def host_of(url: str) -> str:
    """Only the host (and port) of a URL: what may be shown of a webhook, whose path and query (a
    Slack hook's, say) are the secret, as is any user:password in it."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url.removeprefix("slack:"))
        host = parts.hostname or "?"
        return f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return "?"
