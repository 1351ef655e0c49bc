"""Batch result files for the join benchmarks, written fast and cached by size.

An output file of ``rows`` chat.completion lines (attempt 2: shuffled order, contents of
5-80 words, 1% ``error: null`` lines with HTTP 500) and an error file of ``rows // 100``
``batch_expired`` lines from attempt 1 for ids the output then answered, so the join
merges attempts. Requested ids are ``item-0000000`` ... in order. Files are kept in
``$TMPDIR/dib-bench-results/<rows>/`` and reused by later runs.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MODEL = "meta-llama/llama-3.1-8b-instruct/fp-8"
WORDS = "the a batch model answer quick brown fox jumps over lazy dog data asset".split()
_TEXT = " ".join(WORDS[i % len(WORDS)] for i in range(200))
_OK = (
    b'{"id":"batch_req_%08x","custom_id":"%s","response":{"status_code":200,'
    b'"request_id":"req_%08x","body":{"id":"chatcmpl-%08x","object":"chat.completion",'
    b'"created":%d,"model":"' + MODEL.encode() + b'","choices":[{"index":0,"message":'
    b'{"role":"assistant","content":"%s"},"logprobs":null,"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d},'
    b'"system_fingerprint":null}},"error":null}\n'
)
_FAILED = (
    b'{"id":"batch_req_%08x","custom_id":"%s","response":{"status_code":500,'
    b'"request_id":"req_%08x","body":{"error":{"message":"upstream failed",'
    b'"type":"server_error"}}},"error":null}\n'
)
_EXPIRED = (
    b'{"id":"batch_req_e%07x","custom_id":"%s","response":null,"error":'
    b'{"code":"batch_expired","message":"This request could not be executed before the '
    b'completion window expired."}}\n'
)


def custom_ids(rows: int) -> list[str]:
    """The requested ids, in order."""
    return [f"item-{i:07d}" for i in range(rows)]


def custom_id_array(rows: int) -> pa.Array:
    """The requested ids as one Arrow array (no Python object per id)."""
    numbers = pc.utf8_lpad(pa.array(np.arange(rows)).cast(pa.large_string()), 7, "0")
    prefix = pa.scalar("item-", pa.large_string())
    return pc.binary_join_element_wise(prefix, numbers, pa.scalar("", pa.large_string()))


def result_files(rows: int) -> tuple[Path, Path]:
    """``(output, errors)`` for ``rows`` requests, written once per size and cached."""
    folder = Path(tempfile.gettempdir(), "dib-bench-results", str(rows))
    output, errors = folder / "output.jsonl", folder / "errors.jsonl"
    if output.exists() and errors.exists():
        return output, errors
    folder.mkdir(parents=True, exist_ok=True)
    _write(rows, output, errors)
    return output, errors


def _write(rows: int, output: Path, errors: Path) -> None:
    rng = np.random.default_rng(0)
    order = rng.permutation(rows).tolist()
    lengths = rng.integers(25, 400, rows).tolist()
    starts = rng.integers(0, 100, rows).tolist()
    text = _TEXT.encode()
    partial = output.with_suffix(".part")
    with open(partial, "wb") as f:
        chunk: list[bytes] = []
        for n, k in enumerate(order):
            custom_id = b"item-%07d" % k
            if k % 100 == 7:
                chunk.append(_FAILED % (n, custom_id, n))
            else:
                prompt, completion = 20 + k % 50, lengths[k] // 5
                content = text[starts[k] : starts[k] + lengths[k]]
                chunk.append(
                    _OK
                    % (
                        n,
                        custom_id,
                        n,
                        k,
                        1_730_000_000 + n,
                        content,
                        prompt,
                        completion,
                        prompt + completion,
                    )  # fmt: skip
                )
            if len(chunk) == 10_000:
                f.write(b"".join(chunk))
                chunk = []
        f.write(b"".join(chunk))
    expired = [_EXPIRED % (n, b"item-%07d" % k) for n, k in enumerate(range(0, rows, 100))]
    errors.write_bytes(b"".join(expired))
    os.replace(partial, output)
