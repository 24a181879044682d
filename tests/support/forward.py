"""A TCP forwarder for tests: `python -m tests.support.forward LISTEN_HOST PORT TARGET_HOST PORT`.

The Temporal dev server's services dial each other on 127.0.0.1 when its front end is bound to
another address, so tests/test_chaos_hosts.py keeps Temporal on 127.0.0.1 and lets the hosts (network
namespaces) reach it through this process, on an address of the test's own network.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def main(listen: str, port: int, target: str, target_port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(target, target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    server = await asyncio.start_server(handle, listen, port)
    print(f"forwarding {listen}:{port} to {target}:{target_port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    host, port, target, target_port = sys.argv[1:5]
    asyncio.run(main(host, int(port), target, int(target_port)))
