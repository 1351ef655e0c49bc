"""Offline ``/v1/embeddings`` answers: a deterministic unit vector per input.

Each vector is seeded from the model and the input (text or token list), drawn from a
normal distribution, scaled to L2 norm 1 and rounded to float32, so the same input gives
the same vector and similar inputs give unrelated ones.

Example:
    >>> reply = embeddings({"model": "m", "input": ["a", "b"], "dimensions": 8})
    >>> reply.status_code, [len(d["embedding"]) for d in reply.body["data"]]
    (200, [8, 8])
    >>> reply.body["usage"]
    {'prompt_tokens': 2, 'total_tokens': 2}
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import orjson

from .responders import Reply, count_tokens, error_body

DEFAULT_DIMENSIONS = 1024
MAX_DIMENSIONS = 8192
# Native sizes of the built-in embedding models (Qwen3-Embedding-4B: 2560; OpenAI's docs).
MODEL_DIMENSIONS = {
    "qwen/qwen3-embedding-4b": 2560,
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
}


def embeddings(body: dict[str, Any]) -> Reply:
    """Answer one embeddings request body with a ``CreateEmbeddingResponse``.

    Args:
        body: ``{"model", "input", "dimensions"?, "encoding_format"?}``; ``input`` is a
            string, a list of strings, a token list, or a list of token lists.

    Returns:
        200 and the response, or 400 and an OpenAI-style error body for a bad body.
    """
    model = body.get("model") if isinstance(body.get("model"), str) else "offline"
    inputs = _inputs(body.get("input"))
    if inputs is None:
        message = "'input' must be a non-empty string, list of strings or list of token lists."
        return Reply(400, error_body(400, message, "invalid_value"))
    dimensions = body.get("dimensions", MODEL_DIMENSIONS.get(model, DEFAULT_DIMENSIONS))
    if not isinstance(dimensions, int) or not 1 <= dimensions <= MAX_DIMENSIONS:
        message = f"'dimensions' must be an integer from 1 to {MAX_DIMENSIONS}."
        return Reply(400, error_body(400, message, "invalid_value"))
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        message = "'encoding_format' must be 'float' or 'base64'."
        return Reply(400, error_body(400, message, "invalid_value"))
    data = []
    for index, item in enumerate(inputs):
        vector = unit_vector(f"{model}\0{orjson.dumps(item).decode()}", dimensions)
        embedding: Any = (
            base64.b64encode(vector.astype("<f4").tobytes()).decode()
            if encoding == "base64"
            else [float(str(x)) for x in vector]  # float32's shortest decimal form
        )
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(len(i) if isinstance(i, list) else count_tokens(i) for i in inputs)
    return Reply(
        200,
        {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        },
    )


def unit_vector(seed: str, dimensions: int) -> Any:
    """A float32 vector of L2 norm 1 drawn from `seed`.

    Args:
        seed: Any text; the same text gives the same vector.
        dimensions: The vector's length.

    Returns:
        A ``numpy.ndarray`` of float32.

    Example:
        >>> vector = unit_vector("hello", 4)
        >>> vector.dtype.name, round(float((vector.astype("f8") ** 2).sum()), 5)
        ('float32', 1.0)
    """
    import numpy as np  # installed with pandas; loaded only when embeddings are asked for

    digest = hashlib.blake2b(seed.encode(), digest_size=16).digest()
    values = np.random.default_rng(int.from_bytes(digest, "little")).standard_normal(dimensions)
    return (values / np.linalg.norm(values)).astype(np.float32)


def _inputs(value: Any) -> list[str | list[int]] | None:
    """The inputs of an ``input`` field, one per vector; None if it is malformed."""
    if isinstance(value, str):
        return [value] if value else None
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(v, int) for v in value):
        return [value]  # one token list
    if all(isinstance(v, str) and v for v in value):
        return list(value)
    if all(isinstance(v, list) and v and all(isinstance(t, int) for t in v) for v in value):
        return list(value)
    return None
