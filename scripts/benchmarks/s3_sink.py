"""An S3 API endpoint that takes PUTs and forgets them, for the store benchmark.

A real store does its work on other machines. moto, the tests' S3 server, is a faithful but
heavy Python program: on a 2-core machine it would take the cores imgsave is measured on. This
one reads each request whole (the bytes still cross the loopback) and answers as S3 does: PUT
200 with an ETag, DELETE 204, the bulk delete an empty result.

    python s3_sink.py    # prints its endpoint; stops when stdin closes
"""

from __future__ import annotations

import asyncio
import sys

DELETED = (
    b'<?xml version="1.0" encoding="UTF-8"?>'
    b'<DeleteResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"></DeleteResult>'
)


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            method = head.split(b" ", 1)[0]
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            if method == b"DELETE":
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            else:
                body = DELETED if method == b"POST" else b""
                writer.write(
                    b'HTTP/1.1 200 OK\r\nETag: "bench"\r\nContent-Length: '
                    + str(len(body)).encode()
                    + b"\r\n\r\n"
                    + body
                )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def main() -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    print(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    server.close()


if __name__ == "__main__":
    asyncio.run(main())
