"""Request fingerprints (issue 11, item 1): the same question has the same fingerprint on
every path that builds it, whatever its custom_id; any change to the body changes it."""

from __future__ import annotations

import pandas as pd
import pytest

from dagster_inference_batch.request_lines import build_requests, encode_requests
from dagster_inference_batch.request_lines.fingerprint import line_fingerprints

SCHEMA = {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}}
ROWS = pd.DataFrame(
    {"custom_id": ["a", "b", "c"], "prompt": ['Say "hi"', "Ünïcode ✓ \n tab\t", 'Say "hi"']}
)


@pytest.mark.parametrize(
    "options",
    [
        {"model": "m", "body_params": {"max_tokens": 8, "response_format": SCHEMA}},
        {"model": "m", "system_prompt": "Be brief.", "body_params": {"temperature": 0.2}},
        {"model": "e", "endpoint": "/v1/embeddings", "body_params": {"dimensions": 4}},
        {"model": "m", "endpoint": "/v1/completions"},
    ],
)
def test_the_fast_builder_agrees_with_fingerprints_read_from_the_lines(options):
    encoded = build_requests(ROWS, prompt_column="prompt", **options)
    assert encoded.fingerprints == line_fingerprints(encoded.endpoint, encoded.lines)
    assert encoded.fingerprints[0] == encoded.fingerprints[2] != encoded.fingerprints[1]


def test_fingerprints_worked_out_later_skip_ids_of_any_length_or_escape():
    # the fast builder finds each prompt in its line by where its id ends
    rows = pd.DataFrame(
        {
            "custom_id": ['q"1', "ü✓" * 40, "c\\d", "x"],
            "prompt": ['Say "hi"', "b", "tab\there", 'Say "hi"'],
        }
    )
    encoded = build_requests(rows, prompt_column="prompt", model="m")
    assert encoded.fingerprint_list is None  # not worked out while building
    assert encoded.fingerprints == line_fingerprints(encoded.endpoint, encoded.lines)
    assert encoded.fingerprints[0] == encoded.fingerprints[3]


def test_custom_id_and_key_order_do_not_count_and_everything_else_does():
    chat = build_requests(ROWS, model="m", prompt_column="prompt", body_params={"max_tokens": 8})
    renamed = build_requests(
        ROWS.assign(custom_id=["x", "y", "z"]),
        model="m",
        prompt_column="prompt",
        body_params={"max_tokens": 8},
    )
    assert chat.fingerprints == renamed.fingerprints
    by_messages = build_requests(
        ROWS,
        model="m",
        messages=lambda row: [{"content": row["prompt"], "role": "user"}],
        body_params={"max_tokens": 8},
    )
    assert by_messages.fingerprints == chat.fingerprints
    ready = encode_requests(
        [
            {
                "custom_id": "q",
                "body": {
                    "max_tokens": 8,
                    "messages": [{"role": "user", "content": 'Say "hi"'}],
                    "model": "m",
                },
            }
        ],
        endpoint="/v1/chat/completions",
    )
    assert ready.fingerprints[0] == chat.fingerprints[0]
    for other in (
        build_requests(ROWS, model="m2", prompt_column="prompt", body_params={"max_tokens": 8}),
        build_requests(ROWS, model="m", prompt_column="prompt", body_params={"max_tokens": 9}),
        build_requests(
            ROWS,
            model="m",
            prompt_column="prompt",
            endpoint="/v1/completions",
            body_params={"max_tokens": 8},
        ),
    ):
        assert not set(other.fingerprints) & set(chat.fingerprints)


def test_a_subset_keeps_each_lines_fingerprint():
    encoded = build_requests(ROWS, model="m", prompt_column="prompt")
    part = encoded.subset([2, 1])
    assert part.custom_ids == ["c", "b"]
    assert part.fingerprints == [encoded.fingerprints[2], encoded.fingerprints[1]]
    assert part.lines == [encoded.lines[2], encoded.lines[1]]
