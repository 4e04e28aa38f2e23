"""The service's own listening socket gives accepted connections TCP_NODELAY.

asyncio sets TCP_NODELAY only on sockets whose ``proto`` is TCP; a socket made with proto 0 (as the
runner once did) kept Nagle on, and every answer on a kept-alive connection waited ~40 ms for the
client's delayed ACK (found by bench/bench_serve.py).
"""

from __future__ import annotations

import asyncio
import socket

from offterm.serve.runner import bind


async def test_accepted_connections_have_nodelay() -> None:
    seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    sock = bind("127.0.0.1", 0)
    server = await asyncio.start_server(accepted, sock=sock)
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
        async with asyncio.timeout(10):
            assert await seen != 0
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
