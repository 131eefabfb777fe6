"""The pure parts of the Batch APIs, property-tested: lines cut from a stream within a cap, the
identity a batch carries, each documented line shape read (and anything else read as
unreadable, never an error), the states in one vocabulary, and a list that must end."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imgsave.adapters.imageapi.batch_api import FINISHED, STATUSES, BatchUnavailable, LineResult
from imgsave.adapters.imageapi.batch_gemini import STATES, GeminiBatchApi, _info
from imgsave.adapters.imageapi.batch_http import paged
from imgsave.adapters.imageapi.batch_openai import OpenAIBatchApi
from imgsave.core.batch_lines import (
    LineSplitter,
    Oversized,
    batch_metadata,
    display_name,
    head_id,
    identity_in_metadata,
    identity_of,
    line_cap,
    parse_gemini_result,
)
from imgsave.core.settings import ProviderSettings, Settings

OPENAI = OpenAIBatchApi(Settings(base_url="https://api.example/v1", api_key="k"))
GEMINI = GeminiBatchApi(
    Settings(base_url="https://g.example/v1beta", api_key="k", model="m",
             provider=ProviderSettings(kind="gemini"))
)  # fmt: skip

no_newline = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b""))


@given(
    st.lists(no_newline | st.sampled_from([b"", b"  ", b"\r"]), max_size=12),
    st.booleans(),
    st.lists(st.integers(min_value=1, max_value=30), max_size=20),
    st.integers(min_value=1, max_value=45),
    st.integers(min_value=1, max_value=8),
)
def test_any_stream_in_any_chunks_gives_its_lines_and_each_over_the_cap_as_its_head(
    lines: list[bytes], trailing: bool, cuts: list[int], cap: int, head: int
):
    stream = b"\n".join(lines) + (b"\n" if trailing else b"")
    splitter = LineSplitter(cap, head=head)
    out: list[bytes | Oversized] = []
    start = 0
    for cut in cuts:
        out += splitter.feed(stream[start : start + cut])
        start += cut
    out += splitter.feed(stream[start:])
    out += splitter.close()
    expected = [
        Oversized(line[:head], len(line)) if len(line) > cap else line
        for line in lines
        if len(line) > cap or line.strip()
    ]
    assert out == expected


def test_a_line_over_the_cap_is_not_held():
    splitter = LineSplitter(100)
    for _ in range(1000):
        assert splitter.feed(b"x" * 1000) == []
        assert sum(len(p) for p in splitter._pieces) == 0, "dropped as it comes"
    assert splitter.feed(b"x\nnext\n") == [Oversized(b"x" * 4096, 1_000_001), b"next"]


def test_the_cap_is_the_base64_of_the_images_asked_and_one_more_plus_json():
    assert line_cap(3_000_000) == 8_000_000 + (1 << 20)
    assert line_cap(3_000_000, images=2) == 12_000_000 + (1 << 20)


@given(st.text(min_size=1), st.text(min_size=1))
def test_a_display_name_names_its_database_and_run_back_whatever_they_hold(db: str, run: str):
    name = display_name(db, run)
    assert identity_of(name) == (db, run)
    assert name.startswith("imgsave:") and name.count(":") == 2


@given(st.text())
def test_any_other_display_name_is_no_identity_and_never_an_error(name: str):
    found = identity_of(name)
    assert found is None or identity_of(display_name(*found)) == found


def test_openai_metadata_names_the_database_and_run():
    assert identity_in_metadata(batch_metadata("db-1", "run-1")) == ("db-1", "run-1")
    assert identity_in_metadata({"imgsave_db": "db-1"}) == (None, None), "not imgsave's"


@given(st.text(max_size=80), st.sampled_from(["openai", "gemini"]))
def test_the_id_of_a_line_over_the_cap_is_found_in_its_head(identifier: str, kind: str):
    b64 = "A" * 10_000
    if kind == "openai":
        line = json.dumps({"id": "batch_req_1", "custom_id": identifier, "response": {
            "status_code": 200, "body": {"data": [{"b64_json": b64}]}}})  # fmt: skip
        name = "custom_id"
    else:
        line = json.dumps({"key": identifier, "response": {"candidates": [{"content": {
            "parts": [{"inlineData": {"mimeType": "image/png", "data": b64}}]}}]}})  # fmt: skip
        name = "key"
    assert head_id(line.encode()[:4096], name) == identifier


@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_bytes_are_a_result_or_unreadable_never_an_error(raw: bytes):
    for api in (OPENAI, GEMINI):
        result = api.parse_line(raw)
        assert isinstance(result, LineResult)
        assert result.unreadable or result.custom_id is not None


@given(st.binary(min_size=1, max_size=2000), st.text(min_size=1, max_size=40))
def test_an_image_in_a_line_comes_back_as_its_bytes(image: bytes, identifier: str):
    b64 = base64.b64encode(image).decode()
    openai = {"id": "r", "custom_id": identifier, "error": None, "response": {
        "status_code": 200, "request_id": "q",
        "body": {"data": [{"b64_json": b64}], "usage": {"output_tokens": 7}}}}  # fmt: skip
    gemini = {"key": identifier, "response": {
        "candidates": [{"content": {"parts": [{"text": "here"}, {"inlineData": {
            "mimeType": "image/png", "data": b64}}]}, "finishReason": "STOP"}],
        "usageMetadata": {"candidatesTokenCount": 7}}}  # fmt: skip
    for api, line in ((OPENAI, openai), (GEMINI, gemini)):
        result = api.parse_line(json.dumps(line).encode())
        assert result.custom_id == identifier and result.code is None
        assert [i.data for i in result.images] == [image]
        assert result.usage["output_tokens"] == 7


def test_every_documented_shape_of_a_gemini_line_is_read():
    def read(line: object) -> tuple[object, ...]:
        result = GEMINI.parse_line(json.dumps(line).encode())
        return result.custom_id, result.code, len(result.images), result.unreadable

    blocked = {"key": "a", "response": {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}}}
    stopped = {"key": "b", "response": {"candidates": [{"finishReason": "IMAGE_SAFETY"}]}}
    text_only = {"key": "c", "response": {"candidates": [{"content": {"parts": [{"text": "no"}]},
                                                          "finishReason": "STOP"}]}}  # fmt: skip
    failed = {"key": "d", "error": {"code": 3, "message": "bad request", "details": []}}
    named = {"key": "e", "error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "m"}}
    unknown = {"key": "f", "error": {"message": "m"}}
    assert read(blocked) == ("a", "PROHIBITED_CONTENT", 0, False)
    assert read(stopped) == ("b", "IMAGE_SAFETY", 0, False)
    assert read(text_only) == ("c", "no_image", 0, False)
    assert read(failed) == ("d", "INVALID_ARGUMENT", 0, False)
    assert read(named) == ("e", "INVALID_ARGUMENT", 0, False)
    assert read(unknown) == ("f", "error", 0, False)
    assert read({"key": "g"}) == (None, None, 0, True)
    assert parse_gemini_result(json.dumps(failed)).message == "bad request"
    undecodable = {"key": "h", "response": {"candidates": [{"content": {"parts": [
        {"inlineData": {"mimeType": "image/png", "data": "not*base64"}}]}}]}}  # fmt: skip
    kept = GEMINI.parse_line(json.dumps(undecodable).encode()).images
    assert [(i.data, i.undecodable) for i in kept] == [(b"not*base64", True)], "paid: kept raw"


def test_every_documented_shape_of_an_openai_line_is_read():
    error = {"message": "no", "type": "t", "code": "moderation_blocked"}
    response = {"status_code": 400, "request_id": "r", "body": {"error": error}}
    refused = {"id": "b2", "custom_id": "b", "error": None, "response": response}
    never_ran = {"id": "b3", "custom_id": "c", "response": None,
                 "error": {"code": "batch_expired", "message": "expired"}}  # fmt: skip
    empty = {"id": "b4", "custom_id": "d", "error": None,
             "response": {"status_code": 200, "request_id": "r", "body": {"data": []}}}  # fmt: skip
    assert OPENAI.parse_line(json.dumps(refused).encode()).code == "moderation_blocked"
    assert OPENAI.parse_line(json.dumps(never_ran).encode()).code == "batch_expired"
    assert OPENAI.parse_line(json.dumps(empty).encode()).code == "no_image"
    over = OPENAI.parse_line(Oversized(b'{"id": "x", "custom_id": "ims1.q", "resp', 10**9))
    assert (over.custom_id, over.code, over.images) == ("ims1.q", "line_too_large", [])


@pytest.mark.parametrize("prefix", ["BATCH_STATE_", "JOB_STATE_"])
@pytest.mark.parametrize("state", [*STATES, "SOMETHING_NEW"])
def test_every_gemini_state_is_said_in_the_one_vocabulary(prefix: str, state: str):
    batch = _info({"name": "batches/b", "metadata": {"state": prefix + state}})
    assert batch.status in STATUSES
    assert batch.finished == (state in ("SUCCEEDED", "PARTIALLY_SUCCEEDED", "FAILED",
                                        "CANCELLED", "EXPIRED"))  # fmt: skip
    assert set(STATUSES) >= FINISHED


def test_a_gemini_operation_that_ended_in_an_error_is_failed():
    operation = {"name": "batches/b", "done": True, "error": {"code": 13, "message": "x"},
                 "metadata": {"state": "BATCH_STATE_RUNNING"}}  # fmt: skip
    assert _info(operation).status == "failed"


@given(st.lists(st.integers(min_value=0, max_value=6), max_size=12), st.integers(1, 8))
def test_a_list_ends_reads_everything_or_stops_at_a_repeated_cursor_or_its_bound(
    cursors: list[int], bound: int
):
    """Page n names cursors[n] as the next (past the end: none); items are the page numbers."""

    async def page(cursor: str | None) -> tuple[list[int], str | None]:
        number = 0 if cursor is None else int(cursor.split(":")[1])
        following = f"c{cursors[number]}:{number + 1}" if number < len(cursors) else None
        return [number], following

    async def read() -> list[int]:
        return [n async for n in paged(page, "list", max_pages=bound)]

    # A cursor names the page after it, so a repeat can only come from the names: made unique
    # here, a list either ends within its bound or is too long.
    pages = len(cursors) + 1
    if pages <= bound:
        assert asyncio.run(read()) == list(range(pages))
    else:
        with pytest.raises(BatchUnavailable, match=f"past {bound:,} pages"):
            asyncio.run(read())


def test_a_cursor_seen_before_stops_the_list():
    answers = {None: "a", "a": "b", "b": "a"}

    async def page(cursor: str | None) -> tuple[list[str], str | None]:
        return [cursor or "first"], answers[cursor]

    async def read() -> list[str]:
        return [item async for item in paged(page, "list the batches")]

    with pytest.raises(BatchUnavailable, match=r"cursor did not advance \(page 3\)"):
        asyncio.run(read())
