"""The answer store on S3-compatible object storage (moto's server, through s3fs).

Two writers (as two machines would) put answers under one `s3://` URL; a third store,
reaching the bucket by URL and environment alone, finds the newest answer of each.
"""

from __future__ import annotations

import time

import fsspec

from dagster_inference_batch.answer_store import AnswerStore, default_store_url, namespace_for
from tests.test_answer_store import answer, line

NAMESPACE = namespace_for("https://api.example.com/v1")


def test_answer_store_on_s3_shared_by_writers_and_found_by_url(s3_server, s3_bucket, monkeypatch):
    url = f"s3://{s3_bucket}/answers"
    options = s3_server.storage_options()
    first = AnswerStore(url, namespace=NAMESPACE, storage_options=options)
    second = AnswerStore(url, namespace=NAMESPACE, storage_options=options)
    now = time.time()
    assert first.put([answer("a", now - 10), answer("b", now - 10)]) == 2
    assert second.put([answer("b", now, line=line("b", text="newer"))]) == 1

    # the default store from the environment, as a run on another machine finds it
    monkeypatch.setenv("INFERENCE_BATCH_ANSWER_STORE", url)
    reader = AnswerStore(default_store_url(), namespace=NAMESPACE)
    found = reader.lookup(["a", "b", "c"])
    assert sorted(found) == ["a", "b"]
    assert b"newer" in found["b"].line
    assert len(reader) == 2  # fingerprints, each counted once

    # immutable segments only: no temporary files left in the bucket
    fs = fsspec.filesystem("s3", **options)
    names = [p.rsplit("/", 1)[-1] for p in fs.find(f"{s3_bucket}/answers")]
    assert len(names) == 2 and all(n.startswith("segment-") for n in names), names
