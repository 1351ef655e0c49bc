"""Request lines for OpenAI-compatible Batch APIs: build, validate, shard, write.

A request line is one compact JSON document
``{"custom_id", "method": "POST", "url": <endpoint>, "body": {...}}``. Everything here is
checked before anything is uploaded: bad input raises :class:`InvalidBatchInput` naming
the 1-based line number and/or ``custom_id`` and the rule broken (up to 20 problems at
once). This package knows nothing about Dagster or the openai SDK.

- ``build``: lines from a DataFrame (prompts, messages or ready bodies);
- ``encode``: ready lines (dicts, a DataFrame, a JSONL file) checked and encoded;
- ``validate``: the rules and the problems collector;
- ``inputs``: the ``input`` of embeddings, Responses and moderations bodies, counted;
- ``shard``: lines split into batches by model, count and bytes;
- ``write``: JSONL files and their sha256;
- ``encoded``: the ``EncodedRequests`` and ``Shard`` records.
"""

from .build import build_requests
from .encode import encode_requests
from .encoded import EncodedRequests, Shard
from .inputs import embedding_input_count
from .shard import DEFAULT_MAX_BYTES, DEFAULT_MAX_REQUESTS, shard_requests
from .validate import (
    CHAT_ENDPOINT,
    COMPLETIONS_ENDPOINT,
    DEFAULT_MAX_LINE_BYTES,
    EMBEDDINGS_ENDPOINT,
    ENDPOINTS,
    RESPONSES_ENDPOINT,
    check_prompt_source,
)
from .write import write_jsonl

__all__ = [
    "CHAT_ENDPOINT",
    "COMPLETIONS_ENDPOINT",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_LINE_BYTES",
    "DEFAULT_MAX_REQUESTS",
    "EMBEDDINGS_ENDPOINT",
    "ENDPOINTS",
    "RESPONSES_ENDPOINT",
    "EncodedRequests",
    "Shard",
    "build_requests",
    "check_prompt_source",
    "embedding_input_count",
    "encode_requests",
    "shard_requests",
    "write_jsonl",
]
