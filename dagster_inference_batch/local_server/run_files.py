"""The files of a batch being processed, and the result lines of one chunk of it."""

from __future__ import annotations

import mmap
import secrets
from dataclasses import dataclass
from typing import BinaryIO

import orjson

from .responders import Reply
from .validation import Span


@dataclass
class RunFiles:
    """The open files of one batch being processed: its mapped input and partial results.

    Attributes:
        buffer: The input file, memory-mapped.
        spans: Where each request line sits in `buffer`.
        order: The order the requests are answered in.
        output: The partial output file, open for appending.
        errors: The partial error file, open for appending.
        credit: Requests the rate limit allows now (`requests_per_second`).
        last_tick: When `credit` was last topped up.
    """

    buffer: mmap.mmap | bytes
    spans: list[Span]
    order: list[int]
    output: BinaryIO
    errors: BinaryIO
    credit: float = 0.0
    last_tick: float = 0.0

    def close(self) -> None:
        """Close the result files and unmap the input."""
        self.output.close()
        self.errors.close()
        if isinstance(self.buffer, mmap.mmap):
            self.buffer.close()


class ChunkResults:
    """Result lines of one chunk and what they add to the batch counters."""

    def __init__(self) -> None:
        self.output: list[bytes] = []
        self.errors: list[bytes] = []
        self.completed = self.failed = self.input_tokens = self.output_tokens = 0

    def add(self, custom_id: str, reply: Reply) -> None:
        """Add the result line answering `custom_id` with `reply`, and count it."""
        line_id = "batch_req_" + secrets.token_hex(12)
        if reply.status_code is None:
            line = {"id": line_id, "custom_id": custom_id, "response": None, "error": reply.body}
        else:
            response = {
                "status_code": reply.status_code,
                "request_id": "req_" + secrets.token_hex(16),
                "body": reply.body,
            }
            line = {"id": line_id, "custom_id": custom_id, "response": response, "error": None}
        if reply.status_code is not None and 200 <= reply.status_code < 300:
            self.completed += 1
            usage = reply.body.get("usage") or {}
            # chat/completions/embeddings name them prompt/completion; the Responses API input/output
            self.input_tokens += usage.get("prompt_tokens") or usage.get("input_tokens") or 0
            self.output_tokens += usage.get("completion_tokens") or usage.get("output_tokens") or 0
            self.output.append(orjson.dumps(line) + b"\n")
        else:
            self.failed += 1
            self.errors.append(orjson.dumps(line) + b"\n")

    def write(self, run: RunFiles) -> None:
        """Append the lines to the run's output and error files."""
        for stream, lines in ((run.output, self.output), (run.errors, self.errors)):
            if lines:
                stream.write(b"".join(lines))
                stream.flush()


def map_input(handle: BinaryIO) -> mmap.mmap | bytes:
    """Memory-map a file and close `handle` (an empty file cannot be mapped: empty bytes)."""
    with handle:
        if handle.seek(0, 2) == 0:
            return b""
        return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)


def close_input(buffer: mmap.mmap | bytes) -> None:
    """Unmap what `map_input` mapped."""
    if isinstance(buffer, mmap.mmap):
        buffer.close()
