"""The Batch API adapter against the loopback provider's Files and Batches endpoints (the
shapes openai-python's types document), and its retry rules against httpx.MockTransport."""

from __future__ import annotations

import json

import httpx
import pytest

from imgsave._demo.loopback import LoopbackProvider
from imgsave.adapters.imageapi.batches import (
    BatchClient,
    BatchRefused,
    BatchUnavailable,
    NoBatchApi,
)
from imgsave.core.batch_lines import BatchResult, UnreadableLine, parse_result, request_line
from imgsave.core.image_bytes import decode_base64


def jsonl(n: int, prefix: str = "r") -> bytes:
    return b"".join(
        request_line(f"{prefix}-{i}", {"model": "gpt-image-2", "prompt": f"scene {i}", "n": 1})
        for i in range(n)
    )


async def results(client: BatchClient, file_id: str | None) -> list[BatchResult]:
    if file_id is None:
        return []
    return [parse_result(line) async for line in client.lines(file_id)]


async def test_a_batch_is_uploaded_created_followed_and_its_output_streamed_by_custom_id():
    with LoopbackProvider(answer="b64", batch_seconds=0.3) as api:
        async with BatchClient(api.base_url, "sk-test") as client:
            file_id = await client.upload(jsonl(12))
            batch = await client.create(file_id, {"imgsave": "db-fingerprint"})
            assert batch.status == "validating" and batch.total == 12
            assert batch.metadata == {"imgsave": "db-fingerprint"}
            while not (batch := await client.retrieve(batch.id)).finished:
                assert batch.status in ("validating", "in_progress", "finalizing")
            assert (batch.status, batch.completed, batch.failed) == ("completed", 12, 0)
            done = await results(client, batch.output_file_id)
        sent = list(api.sent)
    assert sorted(r.custom_id for r in done) == sorted(f"r-{i}" for i in range(12))
    images = [decode_base64(r.body["data"][0]["b64_json"]) for r in done if r.body]
    import hashlib

    assert sorted(hashlib.sha256(i).hexdigest() for i in images if i) == sorted(sent)
    assert all(r.body and r.body["usage"]["output_tokens"] == 1056 for r in done)
    assert api.batches.created == 1


async def test_failed_lines_come_in_the_error_file_with_the_providers_code():
    refused = {"r-1", "r-4"}
    with LoopbackProvider(
        batch_faults=lambda c: "moderation_blocked" if c in refused else None
    ) as api:
        async with BatchClient(api.base_url, "sk-test") as client:
            batch = await client.create(await client.upload(jsonl(6)), {})
            batch = await client.retrieve(batch.id)
            ok = await results(client, batch.output_file_id)
            failed = await results(client, batch.error_file_id)
    assert (batch.completed, batch.failed) == (4, 2)
    assert {r.custom_id for r in failed} == refused
    assert {r.code for r in failed} == {"moderation_blocked"} and not any(r.ok for r in failed)
    assert len(ok) == 4 and all(r.ok for r in ok)


@pytest.mark.parametrize("how", ["expired", "cancelled"])
async def test_an_expired_or_cancelled_batch_keeps_what_finished(how: str):
    with LoopbackProvider(batch_seconds=5, batch_expire=how == "expired") as api:
        async with BatchClient(api.base_url, "sk-test") as client:
            batch = await client.create(await client.upload(jsonl(10)), {})
            if how == "cancelled":
                assert (await client.cancel(batch.id)).status == "cancelling"
            else:
                api.batches.seconds = 0  # its window has passed
            batch = await client.retrieve(batch.id)
            done = await results(client, batch.output_file_id)
    assert batch.status == how and batch.finished
    assert len(done) == batch.completed == 5


async def test_every_batch_is_listed_newest_first_across_pages():
    with LoopbackProvider() as api:
        async with BatchClient(api.base_url, "sk-test") as client:
            made = [(await client.create(await client.upload(jsonl(1)), {"n": str(i)})).id
                    for i in range(5)]  # fmt: skip
            listed = [b.id async for b in client.listed(page=2)]
    assert listed == list(reversed(made))


async def test_a_provider_without_a_batch_api_is_said_in_one_line_and_nothing_is_created():
    with LoopbackProvider(batch_api=False) as api:
        async with BatchClient(api.base_url, "sk-test") as client:
            with pytest.raises(NoBatchApi, match="has no Batch API"):
                await client.upload(jsonl(3))
            with pytest.raises(NoBatchApi):
                [b async for b in client.listed()]
        assert api.batches.created == 0


async def test_a_refused_batch_says_why():
    with LoopbackProvider() as api:
        async with BatchClient(api.base_url, "sk-test") as client:
            bad = await client.upload(b'{"method": "POST"}\n')
            with pytest.raises(BatchRefused, match="line 1 is not a valid request"):
                await client.create(bad, {})
        assert api.batches.created == 0


class Scripted:
    def __init__(self, *statuses: int):
        self.statuses = list(statuses)
        self.requests: list[httpx.Request] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        batch = {"id": "batch_1", "status": "in_progress", "input_file_id": "file-1",
                 "created_at": 1, "request_counts": {"total": 1}}  # fmt: skip
        return httpx.Response(status, json=batch if status == 200 else {"error": {"message": "x"}})


async def _client(api: Scripted) -> BatchClient:
    async def no_wait(_: float) -> None:
        return None

    return BatchClient(
        "https://api.example/v1", "sk-secret-0123456789", transport=httpx.MockTransport(api.handle),
        sleep=no_wait,
    )  # fmt: skip


async def test_reads_are_retried_but_a_create_whose_answer_was_lost_is_not():
    api = Scripted(500, 503, 200)
    async with await _client(api) as client:
        assert (await client.retrieve("batch_1")).status == "in_progress"
    assert len(api.requests) == 3
    api = Scripted(500)
    async with await _client(api) as client:
        with pytest.raises(BatchUnavailable, match="answered 500"):
            await client.create("file-1", {})
    assert len(api.requests) == 1, "a second create could be a second bill"


def test_lines_are_read_in_every_documented_shape():
    ok = {"id": "b1", "custom_id": "a", "error": None,
          "response": {"status_code": 200, "request_id": "r", "body": {"data": []}}}  # fmt: skip
    error = {"message": "no", "type": "t", "code": "moderation_blocked"}
    response = {"status_code": 400, "request_id": "r", "body": {"error": error}}
    refused = {"id": "b2", "custom_id": "b", "error": None, "response": response}
    never_ran = {"id": "b3", "custom_id": "c", "response": None,
                 "error": {"code": "batch_expired", "message": "expired"}}  # fmt: skip
    assert parse_result(json.dumps(ok)) == BatchResult("a", {"data": []})
    assert parse_result(json.dumps(refused)).code == "moderation_blocked"
    assert parse_result(json.dumps(never_ran)).code == "batch_expired"
    for garbage in (b"{", b"[]", b'{"custom_id": "x"}'):
        with pytest.raises(UnreadableLine):
            parse_result(garbage)
    line = json.loads(request_line("id-1", {"prompt": "é"}))
    assert line == {"custom_id": "id-1", "method": "POST", "url": "/v1/images/generations",
                    "body": {"prompt": "é"}}  # fmt: skip
