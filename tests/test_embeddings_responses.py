"""Embeddings and ``/v1/responses`` lines: built, validated, counted, sharded, and their
answers (in the real OpenAI output-line shapes) parsed and joined."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest

from dagster_inference_batch.errors import InvalidBatchInput
from dagster_inference_batch.providers import PROFILES
from dagster_inference_batch.request_lines import (
    EMBEDDINGS_ENDPOINT,
    ENDPOINTS,
    RESPONSES_ENDPOINT,
    build_requests,
    encode_requests,
    shard_requests,
    write_jsonl,
)
from dagster_inference_batch.result_bodies import embedding_dimension
from dagster_inference_batch.results import (
    RESULT_COLUMNS,
    ResultFile,
    collect_results,
    join_results,
    parse_result_files,
)

TEXTS = pd.DataFrame({"custom_id": ["r1", "r2", "r3"], "text": ["good", "bad", "fine"]})


def emb_line(custom_id: str, value: object, model: str = "e") -> dict:
    return {
        "custom_id": custom_id,
        "url": EMBEDDINGS_ENDPOINT,
        "body": {"model": model, "input": value},
    }


def refused(*args: object, **kwargs: object) -> list[str]:
    with pytest.raises(InvalidBatchInput) as info:
        encode_requests(*args, **kwargs)
    return info.value.problems


# ---- request side ----------------------------------------------------------------------


def test_endpoints_are_every_profiles_endpoints() -> None:
    offered = {e for profile in PROFILES.values() for e in profile.endpoints}
    assert set(ENDPOINTS) == offered
    assert {EMBEDDINGS_ENDPOINT, RESPONSES_ENDPOINT} <= set(ENDPOINTS)


def test_embeddings_lines_carry_input_and_body_params() -> None:
    enc = build_requests(
        TEXTS,
        endpoint=EMBEDDINGS_ENDPOINT,
        prompt_column="text",
        model="qwen/qwen3-embedding-4b",
        body_params={"dimensions": 256, "encoding_format": "base64"},
    )
    first = orjson.loads(enc.lines[0])
    assert first == {
        "custom_id": "r1",
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {
            "model": "qwen/qwen3-embedding-4b",
            "input": "good",
            "dimensions": 256,
            "encoding_format": "base64",
        },
    }
    assert enc.endpoint == EMBEDDINGS_ENDPOINT
    assert enc.embedding_input_counts == [1, 1, 1] and enc.embedding_inputs == 3
    # the same lines pass the generic checks
    again = encode_requests([orjson.loads(line) for line in enc.lines])
    assert again.lines == enc.lines and again.embedding_inputs == 3


def test_embeddings_refuse_messages_naming_the_setting() -> None:
    with pytest.raises(ValueError, match="messages=.*'/v1/embeddings'.*prompt_column"):
        build_requests(
            TEXTS,
            endpoint=EMBEDDINGS_ENDPOINT,
            model="e",
            messages=lambda row: [{"role": "user", "content": row["text"]}],
        )
    with pytest.raises(ValueError, match="body_params may not set 'input'"):
        build_requests(
            TEXTS, endpoint=EMBEDDINGS_ENDPOINT, model="e", prompt_column="text",
            body_params={"input": "x"},
        )  # fmt: skip


def test_responses_lines_from_prompts_and_from_messages() -> None:
    enc = build_requests(
        TEXTS, endpoint=RESPONSES_ENDPOINT, model="gpt-4.1-mini", prompt_column="text",
        body_params={"max_output_tokens": 16},
    )  # fmt: skip
    body = orjson.loads(enc.lines[1])["body"]
    assert orjson.loads(enc.lines[1])["url"] == "/v1/responses"
    assert body == {"model": "gpt-4.1-mini", "input": "bad", "max_output_tokens": 16}
    assert enc.embedding_inputs == 0
    enc = build_requests(
        TEXTS,
        endpoint=RESPONSES_ENDPOINT,
        model="gpt-4.1-mini",
        messages=lambda row: [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": row["text"]},
        ],
    )
    body = orjson.loads(enc.lines[2])["body"]
    assert body["input"][1] == {"role": "user", "content": "fine"} and "messages" not in body


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        (None, "embeddings input must be"),
        ("", "embeddings input must be"),
        ([], "embeddings input must be"),
        (["a", ""], "embeddings input must be"),
        (["a", 1], "embeddings input must be"),
        ([True, False], "embeddings input must be"),
        ({"text": "a"}, "embeddings input must be"),
    ],
)
def test_embeddings_line_needs_a_good_input(value: object, rule: str) -> None:
    lines = [emb_line("a", "ok"), emb_line("b", value)]
    if value is None:
        del lines[1]["body"]["input"]
    found = refused(lines)
    assert len(found) == 1 and found[0].startswith(f"line 2 (custom_id 'b'): {rule}"), found


def test_responses_line_needs_input() -> None:
    lines = [{"custom_id": "a", "url": RESPONSES_ENDPOINT, "body": {"model": "m"}}]
    assert refused(lines) == [
        "line 1 (custom_id 'a'): body lacks 'input' (a string or a list of input items)"
    ]
    lines[0]["body"]["input"] = ""
    assert "non-empty" in refused(lines)[0]


def test_embedding_inputs_count_each_list_element() -> None:
    enc = encode_requests(
        [
            emb_line("a", "one"),
            emb_line("b", ["two", "three", "four"]),
            emb_line("c", [101, 102, 103]),  # one token list
            emb_line("d", [[1, 2], [3]]),  # two token lists
        ]
    )
    assert enc.embedding_input_counts == [1, 3, 1, 2]
    assert enc.embedding_inputs == 7
    # a copy without the counts works them out from the lines
    bare = type(enc)(enc.endpoint, enc.custom_ids, enc.lines, enc.models)
    assert bare.embedding_input_counts == [1, 3, 1, 2]


def test_sharding_respects_max_embedding_inputs(tmp_path: Path) -> None:
    values = [["x"] * 3, "y", ["z"] * 2, "w", ["v"] * 3]  # 3 + 1 + 2 + 1 + 3 = 10 inputs
    enc = encode_requests([emb_line(f"id{i}", v) for i, v in enumerate(values)])
    shards = shard_requests(enc, max_embedding_inputs=4)
    assert sorted(p for s in shards for p in s.positions) == list(range(5))
    for shard in shards:
        assert sum(enc.embedding_input_counts[p] for p in shard.positions) <= 4
    assert len(shards) == 3  # 10 inputs under a cap of 4: three is the fewest
    assert len(shard_requests(enc)) == 1  # no cap: one shard
    write_jsonl(enc, tmp_path / "s.jsonl", shards[0].positions)


def test_sharding_names_a_line_over_the_embedding_cap() -> None:
    enc = encode_requests([emb_line("small", "a"), emb_line("huge", ["t"] * 5)])
    with pytest.raises(InvalidBatchInput) as info:
        shard_requests(enc, max_embedding_inputs=4)
    assert info.value.problems == [
        "line 2 (custom_id 'huge'): 5 embedding inputs in one line, over the "
        "4-input batch limit (max_embedding_inputs)"
    ]
    with pytest.raises(ValueError, match="max_embedding_inputs must be positive"):
        shard_requests(enc, max_embedding_inputs=0)


# ---- result side -----------------------------------------------------------------------


def output_line(custom_id: str, body: dict, status_code: int = 200) -> dict:
    return {
        "id": f"batch_req_{custom_id}",
        "custom_id": custom_id,
        "response": {"status_code": status_code, "request_id": f"req_{custom_id}", "body": body},
        "error": None,
    }


def embedding_body(vectors: list[np.ndarray], encoding: str, tokens: int = 4) -> dict:
    def encoded(v: np.ndarray) -> object:
        if encoding == "base64":
            return base64.b64encode(v.astype("<f4").tobytes()).decode()
        return [float(x) for x in v]

    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encoded(v)}
            for i, v in enumerate(vectors)
        ],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def response_body(text_parts: list[str], status: str = "completed", **extra: object) -> dict:
    return {
        "id": "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b",
        "object": "response",
        "created_at": 1741476542,
        "status": status,
        "error": None,
        "incomplete_details": None,
        "model": "gpt-4.1-2025-04-14",
        "output": [
            {"id": "rs_1", "type": "reasoning", "summary": []},
            {
                "type": "message",
                "id": "msg_67ccd2bf17f0819081ff3bb2cf6508e60bb6a6b452d3795b",
                "status": "completed",
                "role": "assistant",
                "content": [
                    {"type": "output_text", "text": part, "annotations": []} for part in text_parts
                ],
            },
        ],
        "usage": {
            "input_tokens": 36,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 87,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 123,
        },
        **extra,
    }


def write_lines(path: Path, lines: list[dict]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return path


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_embeddings_results_from_built_lines(tmp_path: Path, encoding: str) -> None:
    enc = build_requests(
        TEXTS, endpoint=EMBEDDINGS_ENDPOINT, prompt_column="text", model="e",
        body_params={"dimensions": 8, "encoding_format": encoding},
    )  # fmt: skip
    rng = np.random.default_rng(0)
    vectors = {cid: rng.standard_normal(8).astype(np.float32) for cid in enc.custom_ids}
    lines = [output_line(c, embedding_body([vectors[c]], encoding)) for c in ("r3", "r1")]
    lines.append(
        {"id": "x", "custom_id": "r2", "response": None,
         "error": {"code": "batch_expired", "message": "expired"}}
    )  # fmt: skip
    path = write_lines(tmp_path / "out.jsonl", lines)
    frame = collect_results([ResultFile(path, "output", "batch_1", 1)], enc.custom_ids, TEXTS)
    assert frame.columns.tolist()[:4] == ["custom_id", "status", "content", "embedding"]
    assert frame.status.tolist() == ["succeeded", "expired", "succeeded"]
    for cid, vector in zip(frame.custom_id, frame.embedding, strict=True):
        if cid == "r2":
            assert vector is None
            continue
        assert vector.dtype == np.float32 and vector.shape == (8,)
        np.testing.assert_array_equal(vector, vectors[cid])  # float32 round trip is exact
    assert frame.content.isna().all()
    assert frame.prompt_tokens.tolist()[0] == 4 and frame.completion_tokens.tolist()[0] == 0
    assert frame.total_tokens.tolist()[0] == 4
    assert frame.text.tolist() == ["good", "bad", "fine"]
    assert embedding_dimension(frame) == 8


def test_list_input_gives_a_2d_array_and_join_keeps_vectors(tmp_path: Path) -> None:
    vectors = [np.full(4, i, dtype=np.float32) for i in range(3)]
    shuffled = embedding_body(vectors, "float")
    shuffled["data"].reverse()  # answers may come in any order: index decides
    lines = [
        output_line("many", shuffled),
        output_line("one", embedding_body([vectors[1]], "base64")),
    ]
    path = write_lines(tmp_path / "out.jsonl", lines)
    parsed = parse_result_files([ResultFile(path, "output", "b", 1)])
    assert parsed.embedding[0].shape == (3, 4) and parsed.embedding[0].dtype == np.float32
    np.testing.assert_array_equal(parsed.embedding[0][:, 0], [0, 1, 2])
    joined = join_results(parsed, ["one", "gone", "many"])  # the pandas path
    assert joined.status.tolist() == ["succeeded", "missing", "succeeded"]
    np.testing.assert_array_equal(joined.embedding[0], vectors[1])
    assert joined.embedding[1] is None and joined.embedding[2].shape == (3, 4)
    assert embedding_dimension(joined) == 4


def test_chat_results_get_no_embedding_column(tmp_path: Path) -> None:
    chat = {
        "object": "chat.completion",
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }  # fmt: skip
    path = write_lines(tmp_path / "out.jsonl", [output_line("a", chat)])
    frame = collect_results([ResultFile(path, "output", "b", 1)], ["a"])
    assert frame.columns.tolist() == RESULT_COLUMNS
    assert embedding_dimension(frame) is None


def test_responses_results_from_built_lines(tmp_path: Path) -> None:
    enc = build_requests(TEXTS, endpoint=RESPONSES_ENDPOINT, prompt_column="text", model="g")
    incomplete = response_body(
        ["cut"], status="incomplete", incomplete_details={"reason": "max_output_tokens"}
    )
    failed = response_body([], status="failed")
    failed["error"] = {"code": "server_error", "message": "The model failed."}
    failed["output"] = []
    lines = [
        output_line("r1", response_body(["Hello, ", "world."])),
        output_line("r2", incomplete),
        output_line("r3", failed),
    ]
    path = write_lines(tmp_path / "out.jsonl", lines)
    frame = collect_results([ResultFile(path, "output", "batch_1", 1)], enc.custom_ids)
    assert frame.columns.tolist() == RESULT_COLUMNS
    assert frame.status.tolist() == ["succeeded", "succeeded", "failed"]
    assert frame.content.tolist()[:2] == ["Hello, world.", "cut"]
    assert frame.finish_reason.tolist()[:2] == ["stop", "length"]
    assert frame.model.tolist()[0] == "gpt-4.1-2025-04-14"
    assert frame.prompt_tokens.tolist()[0] == 36
    assert frame.completion_tokens.tolist()[0] == 87
    assert frame.total_tokens.tolist()[0] == 123
    assert frame.error_code.tolist()[2] == "server_error"
    assert frame.error_message.tolist()[2] == "The model failed."
