"""A minimal Batch API (Files and Batches, in the documented shapes) on asyncio, run as its own
process by the batch benchmark: next to no overhead of its own, and an output file it writes
line by line as it is read (a thousand 512 KB images are 700 MB of JSONL: held in memory, they
would be this process's cost, not imgsave's).

    python batch_server.py IMAGE_BYTES [pending] [gemini]   # prints its base URL; stops on EOF

A batch completes at once (or, with `pending`, never: for timing a submission alone). With
`gemini`, it is the Gemini API's Batch API (the resumable upload, batchGenerateContent, the
batch as an operation, the results file of `{"key", "response"}` lines with `inlineData`).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import re
import sys

from imgsave._demo.sample_images import sample_png

POOL = 64  # distinct images, each base64-encoded once before the server is ready
images: list[bytes] = []
files: dict[str, bytes] = {}
batches: dict[str, dict[str, object]] = {}
order: list[str] = []
# Ids no other server shares (a provider never hands out an id twice; the benchmark starts a
# server for each batch it collects, all into one database).
_PREFIX = os.urandom(4).hex()
_counter = itertools.count(1)


def new_id() -> str:
    return f"{_PREFIX}{next(_counter)}"


pending = False
gemini = False


def answer(writer: asyncio.StreamWriter, status: int, payload: object, headers: str = "") -> None:
    body = json.dumps(payload).encode() if payload is not None else b""
    writer.write(
        f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\n{headers}"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


async def stream_output(writer: asyncio.StreamWriter, custom_ids: list[str]) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    usage = b'{"input_tokens":12,"output_tokens":1056,"total_tokens":1068}'
    gemini_usage = b'{"promptTokenCount":9,"candidatesTokenCount":1290,"totalTokenCount":1299}'
    for n, custom_id in enumerate(custom_ids):
        if gemini:
            line = (
                b'{"key":"' + custom_id.encode() + b'","response":{"candidates":[{"content":'
                b'{"role":"model","parts":[{"inlineData":{"mimeType":"image/png","data":"'
                + images[n % POOL] + b'"}}]},"finishReason":"STOP","index":0}],'
                b'"usageMetadata":' + gemini_usage + b"}}\n"
            )  # fmt: skip
        else:
            line = (
                b'{"id":"batch_req_' + str(n).encode() + b'","custom_id":"' + custom_id.encode()
                + b'","response":{"status_code":200,"request_id":"r","body":{"created":0,'
                b'"data":[{"b64_json":"' + images[n % POOL] + b'"}],"usage":' + usage
                + b'}},"error":null}\n'
            )  # fmt: skip
        writer.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
        await writer.drain()
    writer.write(b"0\r\n\r\n")


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            method, path = head.split(b" ", 2)[:2]
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body = await reader.readexactly(length)
            if gemini:
                await handle_gemini(writer, method, path.decode(), body)
                await writer.drain()
                continue
            route = path.decode().split("?")[0].removeprefix("/v1")
            if method == b"POST" and route == "/files":
                # The JSONL is the multipart part that holds custom_ids.
                start = body.index(b'{"custom_id"')
                end = body.rindex(b"}\n") + 2
                file_id = f"file-{new_id()}"
                files[file_id] = body[start:end]
                answer(writer, 200, {"id": file_id, "object": "file", "purpose": "batch"})
            elif method == b"POST" and route == "/batches":
                asked = json.loads(body)
                batch_id = f"batch_{new_id()}"
                lines = files[asked["input_file_id"]]
                count = lines.count(b"\n")
                batches[batch_id] = {
                    "id": batch_id, "object": "batch", "status":
                    "in_progress" if pending else "completed",
                    "input_file_id": asked["input_file_id"], "endpoint": asked["endpoint"],
                    "created_at": 0, "metadata": asked["metadata"],
                    "output_file_id": None if pending else f"out-{batch_id}",
                    "error_file_id": None, "expires_at": None,
                    "request_counts": {"total": count, "completed": 0 if pending else count,
                                       "failed": 0},
                }  # fmt: skip
                order.insert(0, batch_id)
                answer(writer, 200, batches[batch_id])
            elif method == b"GET" and route == "/batches":
                data = [batches[i] for i in order]
                answer(writer, 200, {"object": "list", "data": data, "has_more": False})
            elif method == b"GET" and route.startswith("/batches/"):
                answer(writer, 200, batches[route.removeprefix("/batches/")])
            elif method == b"GET" and route.startswith("/files/out-batch_"):
                batch_id = route.split("/")[2].removeprefix("out-")
                lines = files[str(batches[batch_id]["input_file_id"])]
                custom_ids = re.findall(rb'"custom_id":"([^"]+)"', lines)
                await stream_output(writer, [c.decode() for c in custom_ids])
            elif method == b"GET" and route.endswith("/content"):
                content = files[route.split("/")[2]]
                writer.write(
                    f"HTTP/1.1 200 OK\r\nContent-Length: {len(content)}\r\n\r\n".encode() + content
                )
            else:
                answer(writer, 404, {"error": {"message": f"no route {route}"}})
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


def operation(batch_id: str) -> dict[str, object]:
    """A Gemini batch as its long-running operation."""
    batch = batches[batch_id]
    count = str(batch["count"])
    metadata: dict[str, object] = {
        "name": batch_id, "displayName": batch["display_name"], "createTime":
        "2026-01-01T00:00:00Z", "inputConfig": {"fileName": batch["input"]},
        "state": "BATCH_STATE_RUNNING" if pending else "BATCH_STATE_SUCCEEDED",
        "batchStats": {"requestCount": count} if pending else {
            "requestCount": count, "successfulRequestCount": count},
    }  # fmt: skip
    if pending:
        return {"name": batch_id, "metadata": metadata}
    output = {"responsesFile": f"files/out-{batch_id.removeprefix('batches/')}"}
    return {"name": batch_id, "metadata": {**metadata, "output": output}, "done": True,
            "response": output}  # fmt: skip


async def handle_gemini(
    writer: asyncio.StreamWriter, method: bytes, path: str, body: bytes
) -> None:
    route, _, query = path.partition("?")
    if method == b"POST" and route == "/upload/v1beta/files" and "upload_id" not in query:
        upload = f"{new_id()}"
        port = writer.get_extra_info("sockname")[1]
        url = f"http://127.0.0.1:{port}/upload/v1beta/files?upload_id={upload}"
        answer(writer, 200, None, f"X-Goog-Upload-URL: {url}\r\nX-Goog-Upload-Status: active\r\n")
    elif method == b"POST" and route == "/upload/v1beta/files":
        name = f"files/in-{query.partition('upload_id=')[2]}"
        files[name] = body
        answer(writer, 200, {"file": {"name": name}}, "X-Goog-Upload-Status: final\r\n")
    elif method == b"POST" and route.endswith(":batchGenerateContent"):
        asked = json.loads(body)["batch"]
        batch_id = f"batches/{new_id()}"
        lines = files[asked["input_config"]["file_name"]]
        batches[batch_id] = {"display_name": asked["display_name"],
                             "input": asked["input_config"]["file_name"],
                             "count": lines.count(b"\n")}  # fmt: skip
        order.insert(0, batch_id)
        answer(writer, 200, operation(batch_id))
    elif method == b"GET" and route == "/v1beta/batches":
        answer(writer, 200, {"operations": [operation(i) for i in order]})
    elif method == b"GET" and route.startswith("/v1beta/batches/"):
        answer(writer, 200, operation(route.removeprefix("/v1beta/")))
    elif method == b"GET" and route.startswith("/download/v1beta/files/out-"):
        batch_id = "batches/" + route.removesuffix(":download").rpartition("out-")[2]
        keys = re.findall(rb'"key":"([^"]+)"', files[str(batches[batch_id]["input"])])
        await stream_output(writer, [k.decode() for k in keys])
    else:
        answer(writer, 404, {"error": {"code": 404, "message": f"no route {route}"}})


async def main(size: int) -> None:
    images.extend(base64.b64encode(sample_png(os.urandom(16), size)) for _ in range(POOL))
    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(f"http://127.0.0.1:{port}/{'v1beta' if gemini else 'v1'}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    server.close()


if __name__ == "__main__":
    pending = "pending" in sys.argv[2:]
    gemini = "gemini" in sys.argv[2:]
    asyncio.run(main(int(sys.argv[1])))
