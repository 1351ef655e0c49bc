"""Unit tests for result parsing, classification, merging attempts and joining."""

from __future__ import annotations

from pathlib import Path

import orjson
import pandas as pd
import pytest

from dagster_inference_batch import results
from dagster_inference_batch.results import (
    RESULT_COLUMNS,
    ResultFile,
    collect_results,
    join_results,
    leftover_custom_ids,
    merge_attempts,
    parse_result_files,
)


def chat_ok(custom_id: str, content: str = "hello", **usage: int) -> dict:
    tokens = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5, **usage}
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "m1",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": tokens,
    }
    return {
        "id": f"r-{custom_id}",
        "custom_id": custom_id,
        "response": {"status_code": 200, "request_id": "q", "body": body},
        "error": None,
    }


def completion_ok(custom_id: str, text: str) -> dict:
    body = {
        "object": "text_completion",
        "model": "m2",
        "choices": [{"index": 0, "text": text, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5},
    }
    return {"custom_id": custom_id, "response": {"status_code": 200, "body": body}, "error": None}


def http_error(custom_id: str, status: int, error: dict | None) -> dict:
    body = {"error": error} if error is not None else {}
    return {
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": "q", "body": body},
        "error": None,
    }


def batch_error(custom_id: str, code: str, message: str = "no") -> dict:
    return {
        "id": f"r-{custom_id}",
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message},
    }


class Files:
    """Writes result files under a temporary folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = 0

    def __call__(
        self, lines: list[dict], kind: str = "output", batch_id: str = "b1", attempt: int = 1
    ) -> ResultFile:
        self.count += 1
        path = self.folder / f"{self.count}.jsonl"
        path.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
        return ResultFile(path, kind, batch_id, attempt)  # type: ignore[arg-type]


@pytest.fixture
def files(tmp_path: Path) -> Files:
    return Files(tmp_path)


def as_records(frame: pd.DataFrame, columns: list[str]) -> list[list]:
    return [[None if pd.isna(v) else v for v in row] for row in frame[columns].values.tolist()]


# ----------------------------------------------------------------------------- parsing


def test_each_line_kind_is_classified(files: Files) -> None:
    output = files(
        [
            chat_ok("ok", "hi there", prompt_tokens=7, completion_tokens=8, total_tokens=15),
            completion_ok("text", "once upon"),
            http_error("bad", 400, {"code": "invalid_value", "message": "bad field"}),
            http_error("limited", 429, {"type": "rate_limit_error", "message": "slow down"}),
            http_error("bare", 502, None),
        ]
    )
    errors = files(
        [
            batch_error("exp", "batch_expired", "too late"),
            batch_error("can", "batch_cancelled"),
            batch_error("other", "server_error", "boom"),
            {"custom_id": "nothing", "response": None, "error": None},
        ],
        kind="error",
    )
    frame = parse_result_files([output, errors])
    assert list(frame.columns) == RESULT_COLUMNS
    columns = ["custom_id", "status", "content", "finish_reason", "model", "error_code"]
    assert as_records(frame, columns) == [
        ["ok", "succeeded", "hi there", "stop", "m1", None],
        ["text", "succeeded", "once upon", "length", "m2", None],
        ["bad", "failed", None, None, None, "invalid_value"],
        ["limited", "failed", None, None, None, "rate_limit_error"],
        ["bare", "failed", None, None, None, "http_502"],
        ["exp", "expired", None, None, None, "batch_expired"],
        ["can", "cancelled", None, None, None, "batch_cancelled"],
        ["other", "failed", None, None, None, "server_error"],
        ["nothing", "failed", None, None, None, "missing_response"],
    ]
    assert frame["error_message"].iloc[2] == "bad field"
    assert frame["error_message"].iloc[4] == "HTTP 502"
    assert frame["error_message"].iloc[5] == "too late"
    assert frame["prompt_tokens"].tolist()[:3] == [7, 1, pd.NA]
    assert frame["total_tokens"].iloc[0] == 15
    assert frame["status_code"].tolist()[:5] == [200, 200, 400, 429, 502]
    for name in ("prompt_tokens", "completion_tokens", "total_tokens", "attempt", "status_code"):
        assert str(frame[name].dtype) == "Int64"
    assert set(frame["batch_id"]) == {"b1"}


def test_success_with_null_content_and_missing_usage(files: Files) -> None:
    line = chat_ok("tool", "x")
    line["response"]["body"]["choices"][0]["message"] = {"role": "assistant", "content": None}
    del line["response"]["body"]["usage"]
    frame = parse_result_files([files([line])])
    assert frame["status"].tolist() == ["succeeded"]
    assert pd.isna(frame["content"].iloc[0]) and pd.isna(frame["prompt_tokens"].iloc[0])


def test_no_files_and_empty_files(files: Files) -> None:
    empty = parse_result_files([])
    assert list(empty.columns) == RESULT_COLUMNS and len(empty) == 0
    assert len(parse_result_files([files([])])) == 0
    joined = collect_results([], ["a", "b"])
    assert joined["status"].tolist() == ["missing", "missing"]
    assert joined["custom_id"].tolist() == ["a", "b"]


def test_only_an_error_file_when_output_file_id_is_null(files: Files) -> None:
    errors = files([batch_error("a", "batch_expired")], kind="error")
    joined = collect_results([errors], ["a", "b"])
    assert joined["status"].tolist() == ["expired", "missing"]


def test_blank_lines_crlf_and_no_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    lines = [orjson.dumps(chat_ok(c)) for c in "abc"]
    path.write_bytes(lines[0] + b"\r\n\n  \n" + lines[1] + b"\n" + lines[2])
    frame = parse_result_files([ResultFile(path, "output", "b", 1)])
    assert frame["custom_id"].tolist() == ["a", "b", "c"]


def test_lines_across_block_boundaries(files: Files, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(results, "_BLOCK_BYTES", 97)
    ids = [f"id-{i}" for i in range(50)]
    frame = parse_result_files([files([chat_ok(c, "é" * (i % 7)) for i, c in enumerate(ids)])])
    assert frame["custom_id"].tolist() == ids
    assert frame["content"].tolist() == ["é" * (i % 7) for i in range(50)]


def test_bad_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(orjson.dumps(chat_ok("a")) + b"\n{truncated\n")
    with pytest.raises(ValueError, match=r"out.jsonl: result line 2 is not a valid batch result"):
        parse_result_files([ResultFile(path, "output", "b", 1)])
    path.write_bytes(b'{"response": null, "error": null}\n')
    with pytest.raises(ValueError, match="result line 1"):
        parse_result_files([ResultFile(path, "output", "b", 1)])


def test_content_that_is_not_text_is_kept_as_json(files: Files) -> None:
    line = chat_ok("a")
    line["response"]["body"]["choices"][0]["message"]["content"] = [{"type": "text", "text": "x"}]
    frame = parse_result_files([files([line])])
    assert orjson.loads(frame["content"].iloc[0]) == [{"type": "text", "text": "x"}]


# ----------------------------------------------------------------------------- merging


def test_later_success_replaces_earlier_expiry(files: Files) -> None:
    first = files([batch_error("a", "batch_expired"), chat_ok("b")], kind="error")
    second = files([chat_ok("a", "late answer")], batch_id="b2", attempt=2)
    merged = merge_attempts(parse_result_files([first, second]))
    assert as_records(merged, ["custom_id", "status", "content", "batch_id", "attempt"]) == [
        ["b", "succeeded", "hello", "b1", 1],
        ["a", "succeeded", "late answer", "b2", 2],
    ]


def test_success_is_not_replaced_by_a_later_failure(files: Files) -> None:
    first = files([chat_ok("a", "kept")])
    second = files([http_error("a", 500, {"message": "x"})], attempt=2)
    for order in ([first, second], [second, first]):
        merged = merge_attempts(parse_result_files(order))
        assert as_records(merged, ["custom_id", "status", "content"]) == [
            ["a", "succeeded", "kept"]
        ]


def test_latest_attempt_wins_among_failures_and_later_row_breaks_ties(files: Files) -> None:
    frame = parse_result_files(
        [
            files([batch_error("a", "batch_cancelled")], attempt=3),
            files([batch_error("a", "batch_expired")], attempt=2),
            files([batch_error("b", "x1"), batch_error("b", "x2")]),
        ]
    )
    merged = merge_attempts(frame)
    assert as_records(merged, ["custom_id", "status", "error_code"]) == [
        ["a", "cancelled", "batch_cancelled"],
        ["b", "failed", "x2"],
    ]
    unique = merge_attempts(merged)
    assert unique is merged


# ----------------------------------------------------------------------------- joining


def test_join_keeps_requested_order_and_adds_missing(files: Files) -> None:
    output = files([chat_ok("c"), chat_ok("x-unrequested"), chat_ok("a")])
    errors = files([batch_error("d", "batch_expired")], kind="error")
    frame = parse_result_files([output, errors])
    wanted = ["a", "b", "c", "d"]
    for joined in (join_results(frame, wanted), collect_results([output, errors], wanted)):
        assert joined["custom_id"].tolist() == wanted
        assert joined["status"].tolist() == ["succeeded", "missing", "succeeded", "expired"]
        assert list(joined.columns) == RESULT_COLUMNS
        assert pd.isna(joined["attempt"].iloc[1]) and joined["attempt"].iloc[0] == 1
        assert pd.isna(joined["batch_id"].iloc[1])


def test_join_merges_attempts_itself(files: Files) -> None:
    first = files([batch_error("a", "batch_expired"), chat_ok("b")], kind="error")
    second = files([chat_ok("a", "second")], attempt=2)
    joined = join_results(parse_result_files([first, second]), ["b", "a"])
    assert as_records(joined, ["custom_id", "status", "content", "attempt"]) == [
        ["b", "succeeded", "hello", 1],
        ["a", "succeeded", "second", 2],
    ]
    assert collect_results([first, second], ["b", "a"]).equals(joined)


def test_join_takes_every_column_of_the_winning_row(
    files: Files, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(results, "_BLOCK_BYTES", 300)  # many chunks
    first = files(
        [
            chat_ok("a", "one"),
            http_error("b", 500, {"message": "down", "type": "server_error"}),
            completion_ok("c", "text"),
            batch_error("d", "batch_expired"),
        ]
    )
    second = files(
        [batch_error("a", "batch_cancelled"), chat_ok("d", "two"), http_error("e", 429, None)],
        batch_id="b2",
        attempt=2,
    )
    parsed = parse_result_files([first, second])
    wanted = ["e", "d", "z", "c", "b", "a"]
    winners = as_records(parsed.iloc[[6, 5, 2, 1, 0]], RESULT_COLUMNS)
    missing = ["z", "missing", *[None] * (len(RESULT_COLUMNS) - 2)]
    for joined in (collect_results([first, second], wanted), join_results(parsed, wanted)):
        assert as_records(joined, RESULT_COLUMNS) == [*winners[:2], missing, *winners[2:]]
        assert joined.dtypes.equals(parsed.dtypes)


def test_join_with_inputs(files: Files) -> None:
    output = files([chat_ok("2", "two"), chat_ok("1", "one"), chat_ok("9", "nine")])
    inputs = pd.DataFrame(
        {"custom_id": [1, 2, 3, 4], "prompt": ["p1", "p2", "p3", "p4"], "model": ["u"] * 4}
    )
    wanted = ["3", "1", "2"]
    joined = collect_results([output], wanted, inputs)
    assert list(joined.columns) == [*RESULT_COLUMNS, "prompt", "model_input"]
    assert as_records(
        joined, ["custom_id", "status", "content", "prompt", "model", "model_input"]
    ) == [
        ["3", "missing", None, "p3", None, "u"],
        ["1", "succeeded", "one", "p1", "m1", "u"],
        ["2", "succeeded", "two", "p2", "m1", "u"],
    ]
    in_order = collect_results([output], ["1", "2", "3", "4"], inputs)
    assert in_order["prompt"].tolist() == ["p1", "p2", "p3", "p4"]
    assert join_results(parse_result_files([output]), wanted, inputs).equals(joined)


def test_join_with_a_differently_named_id_column(files: Files) -> None:
    output = files([chat_ok("b", "bee")])
    inputs = pd.DataFrame({"item": ["a", "b"], "text": ["x", "y"]}, index=[10, 20])
    joined = collect_results([output], ["a", "b"], inputs, id_column="item")
    assert as_records(joined, ["custom_id", "item", "text", "status"]) == [
        ["a", "a", "x", "missing"],
        ["b", "b", "y", "succeeded"],
    ]
    with pytest.raises(ValueError, match="repeats the id 'a'"):
        collect_results([output], ["a"], pd.DataFrame({"item": ["a", "a"]}), id_column="item")


def test_leftover_custom_ids(files: Files) -> None:
    frame = parse_result_files(
        [
            files(
                [
                    chat_ok("ok"),
                    http_error("bad-request", 400, {"code": "invalid", "message": "no"}),
                    http_error("slow", 429, {"message": "later"}),
                    http_error("down", 503, None),
                ]
            ),
            files(
                [
                    batch_error("exp", "batch_expired"),
                    batch_error("can", "batch_cancelled"),
                    batch_error("limit", "rate_limit_exceeded"),
                ],
                kind="error",
            ),
        ]
    )
    wanted = ["ok", "bad-request", "slow", "down", "exp", "can", "limit", "never"]
    assert leftover_custom_ids(frame, wanted) == ["exp", "can", "never"]
    assert leftover_custom_ids(frame, wanted, include_failed=True) == [
        "slow",
        "down",
        "exp",
        "can",
        "limit",
        "never",
    ]
