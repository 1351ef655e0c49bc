"""Embeddings and Responses batches end to end: build_requests -> client.submit -> the
local server's offline answers over real HTTP -> client.results."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dagster_inference_batch import InferenceBatchClient, build_requests
from dagster_inference_batch.result_bodies import embedding_dimension

API_KEY = "test-key"
REVIEWS = pd.DataFrame(
    {
        "custom_id": [f"review-{i}" for i in range(6)],
        "text": ["Great value", "Broke in a week", "Fine", "Love it", "Meh", "Five stars"],
    }
)


@pytest.fixture
def server(batch_server):
    return batch_server(api_key=API_KEY)


def run(server, encoded, **options) -> pd.DataFrame:
    client = InferenceBatchClient(api_key=API_KEY, base_url=server.base_url, **options)
    try:
        job = client.wait(client.submit(encoded), poll_interval=0.1, timeout=60)
        return client.results(job, REVIEWS)
    finally:
        client.close()


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_embeddings_batch_returns_vectors_of_the_requested_dimension(server, encoding) -> None:
    encoded = build_requests(
        REVIEWS,
        endpoint="/v1/embeddings",
        prompt_column="text",
        model="qwen/qwen3-embedding-4b",
        body_params={"dimensions": 32, "encoding_format": encoding},
    )
    frame = run(server, encoded)
    assert frame.status.tolist() == ["succeeded"] * len(REVIEWS)
    assert frame.text.tolist() == REVIEWS.text.tolist()
    vectors = np.stack(frame.embedding.tolist())
    assert vectors.shape == (len(REVIEWS), 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)  # unit vectors
    assert len({v.tobytes() for v in vectors}) == len(REVIEWS)  # one per text
    assert embedding_dimension(frame) == 32
    assert frame.content.isna().all() and (frame.completion_tokens == 0).all()
    assert (frame.prompt_tokens > 0).all()


def test_responses_batch_gives_output_text_and_usage(server) -> None:
    encoded = build_requests(
        REVIEWS, endpoint="/v1/responses", prompt_column="text", model="gpt-4.1-mini"
    )
    frame = run(server, encoded, provider="openai")  # Inference.net has no /v1/responses
    assert frame.status.tolist() == ["succeeded"] * len(REVIEWS)
    assert frame.content.map(lambda c: isinstance(c, str) and bool(c)).all()
    assert (frame.prompt_tokens > 0).all() and (frame.completion_tokens > 0).all()
    assert (frame.total_tokens == frame.prompt_tokens + frame.completion_tokens).all()
    assert "embedding" not in frame.columns
