"""parse_content_columns: answers turned into columns, refusals kept per row."""

import json

import pandas as pd
import pytest

from dagster_inference_batch.content import parse_content_columns


def test_succeeded_rows_become_columns_and_refusals_are_kept_per_row():
    frame = pd.DataFrame(
        {
            "status": ["succeeded", "succeeded", "expired", "succeeded"],
            "content": ['{"n": 1, "tags": ["a", "b"]}', "not json", None, "[1, 2]"],
        }
    )

    out = parse_content_columns(frame, json.loads)

    assert out["n"].tolist() == [1, None, None, None]
    assert out["tags"].tolist() == [["a", "b"], None, None, None]
    errors = out["parse_error"].tolist()
    assert errors[0] is None and errors[2] is None
    assert errors[1].startswith("JSONDecodeError")
    assert errors[3] == "TypeError: parser returned list, not a mapping"


def test_no_succeeded_rows_adds_only_the_error_column():
    frame = pd.DataFrame({"status": ["failed"], "content": [None]})
    assert list(parse_content_columns(frame, json.loads).columns) == [
        "status",
        "content",
        "parse_error",
    ]


def test_keys_clashing_with_result_columns_are_refused():
    frame = pd.DataFrame({"status": ["succeeded"], "content": ['{"status": "x"}']})
    with pytest.raises(ValueError, match="clash"):
        parse_content_columns(frame, json.loads)
