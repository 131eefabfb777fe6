"""A minimal OpenAI-compatible image endpoint on asyncio, run as its own process by the
end-to-end benchmark: a fixed latency and next to no overhead of its own, so what is measured
is imgsave, not a thread-per-request test server competing for imgsave's interpreter lock.

    python provider_server.py LATENCY_SECONDS    # prints its base URL; stops when stdin closes
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys

counter = itertools.count(1)


async def handle(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, latency: float
) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            await asyncio.sleep(latency)
            url = f"https://images.bench.test/img/{next(counter):06d}.png"
            body = json.dumps({"created": 0, "data": [{"url": url}]}).encode()
            # Head and body in one write: two would cost a delayed ACK (40 ms) per request.
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def main(latency: float) -> None:
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, latency), "127.0.0.1", 0, backlog=1024
    )
    port = server.sockets[0].getsockname()[1]
    print(f"http://127.0.0.1:{port}/v1", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    server.close()


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1])))
