"""Unit tests for request lines: building, validation, encoding, sharding, writing."""

from __future__ import annotations

import hashlib
import math
import random
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest

from dagster_inference_batch.errors import InvalidBatchInput
from dagster_inference_batch.request_lines import (
    CHAT_ENDPOINT,
    COMPLETIONS_ENDPOINT,
    EncodedRequests,
    build_requests,
    encode_requests,
    shard_requests,
    write_jsonl,
)


def line(custom_id: object = "a", **overrides: object) -> dict:
    request = {"custom_id": custom_id, "method": "POST", "url": CHAT_ENDPOINT}
    request["body"] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    request.update(overrides)
    return request


def problems_of(excinfo: pytest.ExceptionInfo[InvalidBatchInput]) -> list[str]:
    return excinfo.value.problems


def refused(requests: object, **kwargs: object) -> list[str]:
    with pytest.raises(InvalidBatchInput) as excinfo:
        encode_requests(requests, **kwargs)  # type: ignore[arg-type]
    return problems_of(excinfo)


def decoded(encoded: EncodedRequests) -> list[dict]:
    return [orjson.loads(x) for x in encoded.lines]


# ----------------------------------------------------------------------------- building


def test_prompt_column_chat_with_params() -> None:
    df = pd.DataFrame({"id": ["x", "y"], "text": ["Hello", 'Say "hi"\n\\ é 日本']})
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}
    enc = build_requests(
        df,
        id_column="id",
        model="m1",
        prompt_column="text",
        system_prompt="Be brief.",
        body_params={"max_tokens": 16, "temperature": 0.5, "response_format": fmt},
    )
    assert enc.endpoint == CHAT_ENDPOINT
    assert enc.custom_ids == ["x", "y"]
    assert enc.models == ["m1", "m1"]
    assert decoded(enc)[1] == {
        "custom_id": "y",
        "method": "POST",
        "url": CHAT_ENDPOINT,
        "body": {
            "model": "m1",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": 'Say "hi"\n\\ é 日本'},
            ],
            "max_tokens": 16,
            "temperature": 0.5,
            "response_format": fmt,
        },
    }


def test_prompt_column_completions_and_integer_ids() -> None:
    df = pd.DataFrame({"custom_id": np.array([10, 2]), "p": ["one", "two"]})
    enc = build_requests(
        df, endpoint=COMPLETIONS_ENDPOINT, prompt_column="p", body_params={"model": "c"}
    )
    assert enc.custom_ids == ["10", "2"]
    assert decoded(enc)[0] == {
        "custom_id": "10",
        "method": "POST",
        "url": COMPLETIONS_ENDPOINT,
        "body": {"model": "c", "prompt": "one"},
    }


def test_fast_path_matches_generic_encoding() -> None:
    texts = ["plain", 'quo"te', "back\\slash", "tab\tnew\nline", "\x01ctl", "emoji 🎉", "/"]
    df = pd.DataFrame({"custom_id": [f"id-{i}" for i in range(len(texts))], "prompt": texts})
    built = build_requests(df, model="m", prompt_column="prompt", body_params={"n": 1})
    generic = encode_requests(decoded(built))
    assert built.lines == generic.lines
    assert [orjson.loads(x)["body"]["messages"][0]["content"] for x in built.lines] == texts


def test_messages_function() -> None:
    df = pd.DataFrame({"custom_id": ["a", "b"], "q": ["1+1", "2+2"], "k": [1, 2]})
    enc = build_requests(
        df,
        model="m",
        messages=lambda row: [{"role": "user", "content": f"{row['q']} (k={row['k']})"}],
        body_params={"max_tokens": np.int64(5)},
    )
    body = decoded(enc)[1]["body"]
    assert body == {
        "model": "m",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "2+2 (k=2)"}],
    }


def test_messages_function_must_return_a_list() -> None:
    df = pd.DataFrame({"custom_id": ["a", "b"]})
    with pytest.raises(InvalidBatchInput) as excinfo:
        build_requests(df, model="m", messages=lambda row: [] if row["custom_id"] == "b" else [{}])
    assert problems_of(excinfo) == [
        "row index 1 (custom_id 'b'): messages function returned list, not a non-empty list"
    ]


def test_body_column_keys_win_over_params() -> None:
    df = pd.DataFrame(
        {
            "custom_id": ["a", "b"],
            "body": [{"prompt": "x", "max_tokens": 3}, {"prompt": "y", "model": "other"}],
        }
    )
    enc = build_requests(
        df,
        endpoint=COMPLETIONS_ENDPOINT,
        model="m",
        body_column="body",
        body_params={"max_tokens": 9},
    )
    assert [d["body"] for d in decoded(enc)] == [
        {"max_tokens": 3, "model": "m", "prompt": "x"},
        {"max_tokens": 9, "model": "other", "prompt": "y"},
    ]
    assert enc.models == ["m", "other"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"prompt_column": "p", "body_column": "b"},
        {"messages": lambda r: [], "endpoint": COMPLETIONS_ENDPOINT},
        {"prompt_column": "p", "system_prompt": "s", "endpoint": COMPLETIONS_ENDPOINT},
        {"prompt_column": "p", "body_params": {"messages": []}},
    ],
)
def test_bad_argument_combinations(kwargs: dict) -> None:
    df = pd.DataFrame({"custom_id": ["a"], "p": ["x"], "b": [{}]})
    with pytest.raises(ValueError):
        build_requests(df, model="m", **kwargs)


def test_missing_columns_model_and_empty_frame() -> None:
    df = pd.DataFrame({"other": ["x"]})
    with pytest.raises(InvalidBatchInput) as excinfo:
        build_requests(df, prompt_column="prompt")
    found = problems_of(excinfo)
    assert any("missing id column 'custom_id'" in p for p in found)
    assert any("missing content column 'prompt'" in p for p in found)
    assert any("body lacks a string model" in p for p in found)
    with pytest.raises(InvalidBatchInput, match="DataFrame is empty"):
        build_requests(pd.DataFrame({"custom_id": [], "p": []}), model="m", prompt_column="p")


def test_bad_ids_and_prompts_are_all_reported_by_row_and_column() -> None:
    df = pd.DataFrame(
        {
            "custom_id": pd.Series(["a", None, "", "a", 7.5, "f", "g"], dtype=object),
            "prompt": pd.Series(["ok", "ok", "ok", "ok", "ok", None, ""], dtype=object),
        }
    )
    with pytest.raises(InvalidBatchInput) as excinfo:
        build_requests(df, model="m", prompt_column="prompt")
    assert problems_of(excinfo) == [
        "row index 1: missing custom_id",
        "row index 2: empty custom_id",
        "row index 3 (custom_id 'a'): duplicate custom_id (first at row index 0)",
        "row index 4: custom_id must be a string, got float",
        "row index 5 (custom_id 'f'): empty prompt in column 'prompt' (missing value)",
        "row index 6 (custom_id 'g'): empty prompt in column 'prompt'",
    ]
    assert excinfo.value.total == 6


def test_problems_name_the_users_id_column_and_the_rows_index_label() -> None:
    df = pd.DataFrame(
        {"ticket_id": ["t1", "t2", "t2"], "text": ["late", None, "twice"]},
        index=["mon", "tue", "wed"],
    )
    with pytest.raises(InvalidBatchInput) as excinfo:
        build_requests(df, id_column="ticket_id", model="m", prompt_column="text")
    assert problems_of(excinfo) == [
        "row index 'tue' (ticket_id 't2', custom_id 't2'): empty prompt in column 'text' "
        "(missing value)",
        "row index 'wed' (ticket_id 't2', custom_id 't2'): duplicate ticket_id "
        "(first at row index 'tue')",
    ]


def test_string_dtype_columns_with_missing_values() -> None:
    df = pd.DataFrame(
        {
            "custom_id": pd.Series(["a", pd.NA, "c"], dtype="string"),
            "prompt": pd.Series(["x", "y", pd.NA], dtype="string"),
        }
    )
    with pytest.raises(InvalidBatchInput) as excinfo:
        build_requests(df, model="m", prompt_column="prompt")
    assert problems_of(excinfo) == [
        "row index 1: missing custom_id",
        "row index 2 (custom_id 'c'): empty prompt in column 'prompt' (missing value)",
    ]


def test_prompt_that_is_not_text_and_lone_surrogates() -> None:
    prompts = pd.Series(["ok", "bad \ud800", "ok"], dtype=object)
    df = pd.DataFrame({"custom_id": ["a", "b", "c"], "prompt": prompts})
    with pytest.raises(InvalidBatchInput) as excinfo:
        build_requests(df, model="m", prompt_column="prompt")
    (problem,) = problems_of(excinfo)
    assert problem.startswith("row index 1 (custom_id 'b'): text: value JSON cannot carry")
    df = pd.DataFrame({"custom_id": ["a"], "prompt": [3]})
    match = "row index 0 .*prompt in column 'prompt' must be a string, got int"
    with pytest.raises(InvalidBatchInput, match=match):
        build_requests(df, model="m", prompt_column="prompt")


def test_nan_in_body_params_and_line_size_in_fast_path() -> None:
    df = pd.DataFrame({"custom_id": ["a", "b"], "prompt": ["x", "y" * 500]})
    with pytest.raises(InvalidBatchInput, match=r"body_params: body.temperature is NaN"):
        build_requests(df, model="m", prompt_column="prompt", body_params={"temperature": np.nan})
    with pytest.raises(InvalidBatchInput) as excinfo:
        build_requests(df, model="m", prompt_column="prompt", max_line_bytes=400)
    (problem,) = problems_of(excinfo)
    assert problem.startswith("row index 1 (custom_id 'b'): line is ")
    assert "over the 400-byte limit" in problem


# ----------------------------------------------------------------------------- validation


def test_encode_accepts_defaults_and_numpy_values() -> None:
    body = {"model": "m", "max_tokens": np.int64(4), "temperature": np.float32(0.25)}
    body["logit_bias"] = np.array([1, 2])
    enc = encode_requests([{"custom_id": "a", "body": body}])
    assert decoded(enc)[0] == {
        "custom_id": "a",
        "method": "POST",
        "url": CHAT_ENDPOINT,
        "body": {"model": "m", "max_tokens": 4, "temperature": 0.25, "logit_bias": [1, 2]},
    }
    assert enc.nbytes == len(enc.lines[0]) + 1


def test_endpoint_taken_from_lines() -> None:
    enc = encode_requests(
        [line("a", url=COMPLETIONS_ENDPOINT), line("b", url=COMPLETIONS_ENDPOINT)]
    )
    assert enc.endpoint == COMPLETIONS_ENDPOINT


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ({"custom_id": None}, "line 2: missing custom_id"),
        ({"custom_id": 5}, "line 2: custom_id must be a string, got int"),
        ({"custom_id": ["x"]}, "line 2: custom_id must be a string, got list"),
        ({"custom_id": ""}, "line 2: empty custom_id"),
        ({"custom_id": "a"}, "line 2 (custom_id 'a'): duplicate custom_id (first on line 1)"),
        ({"method": "GET"}, "line 2 (custom_id 'b'): method must be POST, got 'GET'"),
        ({"url": "/v1/audio/speech"}, "line 2 (custom_id 'b'): unsupported url '/v1/audio/speech'"),
        ({"url": COMPLETIONS_ENDPOINT}, "line 2 (custom_id 'b'): url '/v1/completions' differs"),
        ({"body": "text"}, "line 2 (custom_id 'b'): body must be a JSON object, got str"),
        ({"body": {"messages": []}}, "line 2 (custom_id 'b'): body lacks a string model"),
        ({"body": {"model": 3}}, "line 2 (custom_id 'b'): body lacks a string model"),
        ({"extra": 1}, "line 2 (custom_id 'b'): unexpected key(s) ['extra']"),
        (
            {"body": {"model": "m", "temperature": float("nan")}},
            "line 2 (custom_id 'b'): body.temperature is NaN or infinity",
        ),
        (
            {"body": {"model": "m", "x": [1, {"y": -math.inf}]}},
            "line 2 (custom_id 'b'): body.x[1].y is NaN or infinity",
        ),
        (
            {"body": {"model": "m", "t": np.float32("inf")}},
            "line 2 (custom_id 'b'): body.t is NaN or infinity",
        ),
        (
            {"body": {"model": "m", "a": np.array([1.0, np.nan])}},
            "line 2 (custom_id 'b'): body.a is NaN or infinity",
        ),
        (
            {"body": {"model": "m", "s": "x\udcff"}},
            "line 2 (custom_id 'b'): value JSON cannot carry (str is not valid UTF-8",
        ),
        (
            {"body": {"model": "m", "b": b"raw"}},
            "line 2 (custom_id 'b'): value JSON cannot carry (Type is not JSON serializable: bytes",
        ),
        (
            {"body": {"model": "m", "o": object()}},
            "line 2 (custom_id 'b'): value JSON cannot carry (Type is not JSON serializable",
        ),
        (
            {"body": {"model": "m", "na": pd.NA}},
            "line 2 (custom_id 'b'): value JSON cannot carry (Type is not JSON serializable",
        ),
    ],
)
def test_each_rule_names_line_and_custom_id(bad: dict, expected: str) -> None:
    found = refused([line("a"), {**line("b"), **bad}])
    assert len(found) == 1
    assert found[0].startswith(expected), found[0]


def test_url_differing_from_endpoint_argument() -> None:
    found = refused([line("a")], endpoint=COMPLETIONS_ENDPOINT)
    assert found == [
        "line 1 (custom_id 'a'): url '/v1/chat/completions' differs from '/v1/completions' "
        "(the endpoint argument); one batch job takes one url"
    ]
    with pytest.raises(InvalidBatchInput, match="unsupported url '/v1/audio/speech'"):
        encode_requests([line("a")], endpoint="/v1/audio/speech")


def test_null_is_fine_and_line_size_limit() -> None:
    enc = encode_requests([line("a", body={"model": "m", "stop": None})])
    assert decoded(enc)[0]["body"]["stop"] is None
    found = refused([line("a"), line("b", body={"model": "m", "p": "x" * 200})], max_line_bytes=150)
    assert len(found) == 1 and found[0].startswith("line 2 (custom_id 'b'): line is 2")


def test_not_an_object_and_empty_input() -> None:
    assert refused([line("a"), ["not", "a", "dict"]]) == [
        "line 2: request line is not a JSON object"
    ]
    assert refused([]) == ["no request lines: the input is empty"]


def test_first_twenty_problems_in_line_order() -> None:
    requests = [line(f"id{i}") for i in range(30)]
    for i in (3, 5, 7):
        requests[i]["method"] = "PUT"
    for i in range(8, 30):
        requests[i]["body"] = {"model": None}
    with pytest.raises(InvalidBatchInput) as excinfo:
        encode_requests(requests)
    error = excinfo.value
    assert error.total == 25
    assert len(error.problems) == 20
    lines = [int(p.split()[1]) for p in error.problems]
    assert lines == [4, 6, 8, *range(9, 26)]
    assert "... and 5 more" in str(error)


def test_duplicates_found_next_to_other_bad_ids() -> None:
    found = refused([line("a"), line(None), line("a")])
    assert found == [
        "line 2: missing custom_id",
        "line 3 (custom_id 'a'): duplicate custom_id (first on line 1)",
    ]


def test_jsonl_path_keeps_file_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    rows = [orjson.dumps(line("a")), b"", orjson.dumps(line("b")), b"{not json"]
    path.write_bytes(b"\n".join(rows) + b"\n")
    found = refused(path)
    assert len(found) == 1 and found[0].startswith("line 4: not valid JSON")
    path.write_bytes(b"\n".join(rows[:3]) + b"\n\n" + orjson.dumps(line("a", method="GET")))
    assert refused(str(path)) == [
        "line 5 (custom_id 'a'): duplicate custom_id (first on line 1)",
        "line 5 (custom_id 'a'): method must be POST, got 'GET'",
    ]
    path.write_bytes(b"\n".join(rows[:3]))
    assert encode_requests(path).custom_ids == ["a", "b"]


def test_dataframe_input_to_encode() -> None:
    df = pd.DataFrame(
        {
            "custom_id": [1, 2],
            "body": [{"model": "m", "prompt": "x"}, {"model": "m", "prompt": "y"}],
            "url": [COMPLETIONS_ENDPOINT] * 2,
            "ignored": [0, 0],
        }
    )
    enc = encode_requests(df)
    assert enc.custom_ids == ["1", "2"] and enc.endpoint == COMPLETIONS_ENDPOINT
    with pytest.raises(InvalidBatchInput, match="missing column 'body'"):
        encode_requests(df.drop(columns=["body"]))


# ----------------------------------------------------------------------------- sharding


def make_encoded(sizes: list[int], models: list[str] | None = None) -> EncodedRequests:
    models = models or ["m"] * len(sizes)
    requests = [
        {"custom_id": f"r{i}", "body": {"model": model, "pad": "x" * size}}
        for i, (size, model) in enumerate(zip(sizes, models, strict=True))
    ]
    return encode_requests(requests)


def check_invariants(enc: EncodedRequests, shards: list, max_requests: int, max_bytes: int) -> None:
    positions = [p for s in shards for p in s.positions]
    assert sorted(positions) == list(range(len(enc)))  # every request exactly once
    for k, shard in enumerate(shards):
        assert shard.index == k
        assert shard.positions == sorted(shard.positions)  # input order kept
        assert shard.request_count == len(shard.positions) <= max_requests
        assert shard.nbytes == sum(len(enc.lines[p]) + 1 for p in shard.positions) <= max_bytes
        assert {enc.models[p] for p in shard.positions} == {shard.model}


def greedy_count(sizes: list[int], max_requests: int, max_bytes: int) -> int:
    count, used, n = 1, 0, 0
    for size in sizes:
        if n + 1 > max_requests or used + size > max_bytes:
            count, used, n = count + 1, 0, 0
        used, n = used + size, n + 1
    return count


def test_count_bound_shards_are_balanced() -> None:
    enc = make_encoded([5] * 1050)
    shards = shard_requests(enc, max_requests=100)
    assert len(shards) == 11
    counts = [s.request_count for s in shards]
    assert max(counts) - min(counts) <= 1
    check_invariants(enc, shards, 100, 200 * 1024 * 1024)


def test_byte_bound_shards_are_few_and_roughly_balanced() -> None:
    enc = make_encoded([100] * 50 + [1000] * 5 + [100] * 50)
    line_bytes = [len(x) + 1 for x in enc.lines]
    max_bytes = 3000
    shards = shard_requests(enc, max_requests=1000, max_bytes=max_bytes)
    check_invariants(enc, shards, 1000, max_bytes)
    assert len(shards) == greedy_count(line_bytes, 1000, max_bytes)
    assert max(s.nbytes for s in shards) <= 1.5 * sum(line_bytes) / len(shards)


@pytest.mark.parametrize("seed", range(8))
def test_random_shards_keep_every_invariant(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(1, 300)
    models = [rng.choice("ab") if seed % 2 else "a" for _ in range(n)]
    enc = make_encoded([rng.choice([1, 10, 300, 2000]) for _ in range(n)], models)
    line_bytes = [len(x) + 1 for x in enc.lines]
    max_requests = rng.randint(1, 60)
    max_bytes = max(line_bytes) + rng.randint(0, 20_000)
    shards = shard_requests(enc, max_requests=max_requests, max_bytes=max_bytes)
    check_invariants(enc, shards, max_requests, max_bytes)
    for model in set(models):
        own = [b for b, m in zip(line_bytes, models, strict=True) if m == model]
        assert sum(s.model == model for s in shards) == greedy_count(own, max_requests, max_bytes)


def test_models_never_share_a_shard() -> None:
    models = ["a", "b"] * 30
    enc = make_encoded([3] * 60, models)
    shards = shard_requests(enc, max_requests=20)
    assert [(s.model, s.request_count) for s in shards] == [("a", 15), ("a", 15)] + [
        ("b", 15),
        ("b", 15),
    ]
    check_invariants(enc, shards, 20, 10**9)


def test_sha256_and_bytes_match_written_files(tmp_path: Path) -> None:
    enc = make_encoded([7, 300, 12, 80, 5, 9, 40])
    shards = shard_requests(enc, max_requests=3)
    for shard in shards:
        path = tmp_path / f"{shard.index}.jsonl"
        write_jsonl(enc, path, shard.positions)
        data = path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard.sha256
        assert len(data) == shard.nbytes
        assert [orjson.loads(x)["custom_id"] for x in data.splitlines()] == [
            enc.custom_ids[p] for p in shard.positions
        ]
    whole = tmp_path / "all.jsonl"
    write_jsonl(enc, whole)
    assert hashlib.sha256(whole.read_bytes()).hexdigest() == enc.sha256()
    assert whole.stat().st_size == enc.nbytes


def test_line_bigger_than_a_batch_is_refused() -> None:
    enc = make_encoded([10, 5000, 10])
    with pytest.raises(InvalidBatchInput) as excinfo:
        shard_requests(enc, max_bytes=1000)
    (problem,) = problems_of(excinfo)
    assert problem.startswith("line 2 (custom_id 'r1'): line is ")
    assert "over the 1000-byte batch limit" in problem
    with pytest.raises(ValueError):
        shard_requests(enc, max_requests=0)
