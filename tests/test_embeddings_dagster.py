"""An embeddings pipeline through the factory: request lines with ``input``, results with
an ``embedding`` column, and the vector length in the results metadata."""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg
import numpy as np
import pytest

from dagster_inference_batch.metadata_set import InferenceBatchMetadataSet
from tests.dagster_harness import NAME, Harness


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_embeddings_pipeline_gives_vectors_and_their_dimension(
    instance, shared_batch_server, encoding_format
):
    harness = Harness(
        instance,
        shared_batch_server.base_url,
        rows=6,
        endpoint="/v1/embeddings",
        model="qwen/qwen3-embedding-4b",
        body_params={"dimensions": 64, "encoding_format": encoding_format},
        results_wait_seconds=30,
    )
    keys = harness.pipeline
    result = harness.materialize(keys.input_file_key, keys.batch_key, keys.results_key)
    assert result.success

    out = result.asset_materializations_for_node(f"{NAME}_results")[0].metadata
    meta = InferenceBatchMetadataSet.extract(out)
    assert (meta.succeeded, meta.embedding_dimension) == (6, 64)

    frame = result.output_for_node(f"{NAME}_results")
    assert list(frame["status"].unique()) == ["succeeded"]
    vectors = np.stack(frame["embedding"].to_list())
    assert vectors.shape == (6, 64) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert frame["content"].isna().all()
