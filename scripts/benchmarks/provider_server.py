"""A minimal OpenAI-compatible image endpoint on asyncio, run as its own process by the
end-to-end benchmark: a fixed latency and next to no overhead of its own, so what is measured
is imgsave, not a thread-per-request test server competing for imgsave's interpreter lock.

    python provider_server.py LATENCY_SECONDS [url|b64 [IMAGE_BYTES]]
        # prints its base URL; stops when stdin closes

In b64 mode every answer carries a distinct IMAGE_BYTES-long image (a valid PNG:
_demo/sample_images.py) as data[].b64_json, as OpenAI's GPT image models answer. The images
are made and encoded before the server says it is ready: a real provider's work is not on
this machine's cores, so this one's must not be either while imgsave is measured.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import sys

from imgsave._demo.sample_images import sample_png

counter = itertools.count(1)


POOL = 600  # distinct images made ahead; a benchmark asks for fewer


def b64_image(size: int) -> str:
    return base64.b64encode(sample_png(os.urandom(16), size)).decode()


async def handle(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    latency: float,
    mode: str,
    size: int,
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
            n = next(counter)
            if mode == "b64":
                body = bodies[n % len(bodies)]
            else:
                url = f"https://images.bench.test/img/{n:06d}.png"
                body = json.dumps({"created": 0, "data": [{"url": url}]}).encode()
            # Head and body in one write: two would cost a delayed ACK (40 ms) per request.
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


bodies: list[bytes] = []


async def main(latency: float, mode: str, size: int) -> None:
    if mode == "b64":
        bodies.extend(
            json.dumps({"created": 0, "data": [{"b64_json": b64_image(size)}]}).encode()
            for _ in range(POOL)
        )
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, latency, mode, size), "127.0.0.1", 0, backlog=1024
    )
    port = server.sockets[0].getsockname()[1]
    print(f"http://127.0.0.1:{port}/v1", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    server.close()


if __name__ == "__main__":
    mode = sys.argv[2] if len(sys.argv) > 2 else "url"
    size = int(sys.argv[3]) if len(sys.argv) > 3 else 1_500_000
    asyncio.run(main(float(sys.argv[1]), mode, size))
