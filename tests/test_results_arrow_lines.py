"""The Arrow fast path for result lines (`arrow_lines`) gives every line exactly what the
line-by-line parse gives it, whatever the mix of lines in a block, and leaves to that
parse every line it cannot settle."""

from __future__ import annotations

import copy
import random
import time
from pathlib import Path

import orjson
import pandas as pd
import pytest

from dagster_inference_batch import arrow_lines, results
from dagster_inference_batch.results import ResultFile, parse_result_files
from tests.test_results import batch_error, chat_ok, completion_ok, http_error


def embedding_ok(custom_id: str) -> dict:
    body = {
        "object": "list",
        "model": "e1",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -1.0]}],
        "usage": {"prompt_tokens": 2, "total_tokens": 2},
    }
    return {"custom_id": custom_id, "response": {"status_code": 200, "body": body}, "error": None}


def odd_lines(custom_id: str) -> list[dict]:
    """Lines off the usual path: each must come out as the line-by-line parse says."""
    no_message = completion_ok(custom_id, "t")
    no_message["response"]["body"]["choices"][0]["message"] = None
    null_content = chat_ok(custom_id)
    null_content["response"]["body"]["choices"][0]["message"]["content"] = None
    no_usage = chat_ok(custom_id)
    del no_usage["response"]["body"]["usage"]
    no_choices = chat_ok(custom_id)
    no_choices["response"]["body"]["choices"] = []
    two_choices = chat_ok(custom_id)
    two_choices["response"]["body"]["choices"].append({"index": 1, "message": {"content": "b"}})
    null_choices = chat_ok(custom_id)
    null_choices["response"]["body"]["choices"] = None
    no_body = chat_ok(custom_id)
    no_body["response"]["body"] = None
    failed_body = chat_ok(custom_id)
    failed_body["response"]["body"]["status"] = "failed"
    error_without_code = batch_error(custom_id, "x")
    del error_without_code["error"]["code"]
    empty_error = chat_ok(custom_id)
    empty_error["error"] = {}
    error_and_response = chat_ok(custom_id)
    error_and_response["error"] = {"code": "batch_cancelled", "message": "stop"}
    null_id = chat_ok(custom_id)
    null_id["custom_id"] = None
    return [
        completion_ok(custom_id, "x"),
        no_message,
        null_content,
        no_usage,
        no_choices,
        two_choices,
        null_choices,
        no_body,
        failed_body,
        http_error(custom_id, 500, {"message": "boom", "type": "server_error"}),
        http_error(custom_id, 429, None),
        http_error(custom_id, 404, {"code": "nope"}),
        http_error(custom_id, 400, {"code": "", "type": "invalid_request", "message": ""}),
        http_error(custom_id, 503, {"code": None, "type": None, "message": None}),
        http_error(custom_id, 500, "upstream down"),
        http_error(custom_id, 500, {"code": 17}),
        {"custom_id": custom_id, "response": {"status_code": 502, "body": None}, "error": None},
        {"custom_id": custom_id, "response": {"status_code": 500}, "error": {}},
        {"custom_id": custom_id, "response": {"status_code": 500}, "error": {"code": "x"}},
        http_error(custom_id, 500, {"code": "c", "type": "t", "message": "m"}),
        batch_error(custom_id, "batch_expired"),
        batch_error(custom_id, "batch_cancelled"),
        batch_error(custom_id, "rate_limit_exceeded"),
        error_without_code,
        empty_error,
        error_and_response,
        null_id,
        embedding_ok(custom_id),
    ]


def write(path: Path, lines: list[bytes]) -> ResultFile:
    path.write_bytes(b"".join(lines))
    return ResultFile(path, "output", "b1", 1)


def line_by_line(monkeypatch: pytest.MonkeyPatch, files: list[ResultFile]) -> pd.DataFrame:
    with monkeypatch.context() as patched:
        patched.setattr(arrow_lines, "read_block", lambda data: None)
        return parse_result_files(files)


def assert_same(monkeypatch: pytest.MonkeyPatch, files: list[ResultFile]) -> pd.DataFrame:
    fast = parse_result_files(files)
    pd.testing.assert_frame_equal(fast, line_by_line(monkeypatch, files))
    return fast


@pytest.mark.parametrize("seed", range(6))
def test_mixed_blocks_agree_with_the_line_by_line_parse(tmp_path, monkeypatch, seed):
    # mostly usual lines (so Arrow takes the blocks), odd ones sprinkled in, small blocks
    rng = random.Random(seed)
    monkeypatch.setattr(results, "_BLOCK_BYTES", rng.choice([700, 2_000, 1 << 20]))
    lines = []
    for i in range(400):
        kind = rng.random()
        if kind < 0.75:
            line = orjson.dumps(chat_ok(f"id-{i}", "é" * (i % 5), prompt_tokens=i))
        elif kind < 0.85:
            line = orjson.dumps(batch_error(f"id-{i}", rng.choice(["batch_expired", "other"])))
        else:
            line = orjson.dumps(rng.choice(odd_lines(f"id-{i}")))
        lines.append(line + rng.choice([b"\n", b"\r\n", b"\n\n", b"\n  \n"]))
    frame = assert_same(monkeypatch, [write(tmp_path / "out.jsonl", lines)])
    assert len(frame) == 400


def test_every_odd_line_among_usual_ones_agrees(tmp_path, monkeypatch):
    for number, odd in enumerate(odd_lines("odd")):
        usual = [orjson.dumps(chat_ok(f"id-{i}")) + b"\n" for i in range(9)]
        path = tmp_path / f"{number}.jsonl"
        frame = assert_same(
            monkeypatch, [write(path, [*usual[:4], orjson.dumps(odd) + b"\n", *usual[4:]])]
        )
        assert frame["custom_id"].tolist()[:4] == [f"id-{i}" for i in range(4)]


def test_a_block_arrow_refuses_is_read_line_by_line(tmp_path, monkeypatch):
    parts = chat_ok("parts")
    parts["response"]["body"]["choices"][0]["message"]["content"] = [{"type": "text"}]
    numeric = chat_ok("x")
    numeric["custom_id"] = 7
    for odd in (parts, numeric):
        lines = [orjson.dumps(chat_ok(f"id-{i}")) + b"\n" for i in range(5)]
        lines.insert(2, orjson.dumps(odd) + b"\n")
        assert arrow_lines.read_block(b"".join(lines)) is None
        assert_same(monkeypatch, [write(tmp_path / "out.jsonl", lines)])


def test_the_usual_lines_are_settled_by_arrow():
    lines = [chat_ok("a"), completion_ok("b", "x"), batch_error("c", "batch_expired")]
    lines += [http_error("d", 500, {"message": "boom"}), embedding_ok("e")]
    block = arrow_lines.read_block(b"\n".join(map(orjson.dumps, lines)))
    assert block.claimed.tolist() == [True, True, True, True, False]


def test_a_line_longer_than_a_block(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "_BLOCK_BYTES", 64)
    lines = [orjson.dumps(chat_ok(f"id-{i}", "long " * 50)) + b"\n" for i in range(3)]
    frame = assert_same(monkeypatch, [write(tmp_path / "out.jsonl", lines)])
    assert frame["content"].tolist() == ["long " * 50] * 3


def test_a_bad_line_is_named_the_same_way(tmp_path, monkeypatch):
    lines = [orjson.dumps(chat_ok(f"id-{i}")) + b"\n" for i in range(6)]
    missing_id = copy.deepcopy(chat_ok("x"))
    del missing_id["custom_id"]
    for bad in (b"{truncated\n", orjson.dumps(missing_id) + b"\n"):
        file = write(tmp_path / "out.jsonl", [*lines[:3], b"\n", bad, *lines[3:]])
        with pytest.raises(ValueError, match=r"out.jsonl: result line 4 is not a valid"):
            parse_result_files([file])


def test_arrow_reads_stop_soon_after_a_block_it_cannot_take(tmp_path, monkeypatch):
    # an embeddings file: Arrow settles none of the first block, so the rest of the file
    # is read line by line; only the reads already started ahead may still have run
    monkeypatch.setattr(results, "_BLOCK_BYTES", 300)
    lines = [orjson.dumps(embedding_ok(f"id-{i}")) + b"\n" for i in range(60)]
    read_block, reads = arrow_lines.read_block, []
    monkeypatch.setattr(arrow_lines, "read_block", lambda data: reads.append(1) or read_block(data))
    frame = parse_result_files([write(tmp_path / "out.jsonl", lines)])
    assert frame["custom_id"].tolist() == [f"id-{i}" for i in range(60)]
    assert len(reads) <= 2 + results.pa.cpu_count() < 30  # of 60 blocks


def test_blocks_read_ahead_out_of_order_come_back_in_file_order(tmp_path, monkeypatch):
    # the later blocks' reads finish first: the chunks still follow the file
    monkeypatch.setattr(results, "_BLOCK_BYTES", 400)
    lines = [orjson.dumps(chat_ok(f"id-{i}", "x" * (i % 7))) + b"\n" for i in range(80)]
    read_block, first = arrow_lines.read_block, []

    def slow_first(data):
        if not first:
            first.append(1)
            time.sleep(0.3)
        return read_block(data)

    monkeypatch.setattr(arrow_lines, "read_block", slow_first)
    frame = assert_same(monkeypatch, [write(tmp_path / "out.jsonl", lines)])
    assert frame["custom_id"].tolist() == [f"id-{i}" for i in range(80)]
