"""Where the drop-in test's MCP server lives (its state folder and port), fixed once per process.

Apart from tests/mcp/dropin_app.py because the workflow sandbox re-imports that module: this one is
passed through, so the worker's sandboxed copy and the test see the same values."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

STATE = Path(os.environ.get("MCP_DROPIN_STATE") or Path(tempfile.gettempdir()) / f"lockgate-mcp-dropin-{os.getpid()}")
SERVER = str(Path(__file__).with_name("bank_server.py"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PORT = int(os.environ.get("MCP_DROPIN_PORT") or _free_port())
URL = f"http://127.0.0.1:{PORT}/mcp"
