"""Input-file checks the worker runs before a batch starts, like the real service."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

MAX_REPORTED_ERRORS = 20
REQUIRED_FIELDS = ("custom_id", "method", "url", "body")

Span = tuple[int, int]


@dataclass
class InputCheck:
    """What validation found: the request lines' byte spans, errors, the first model seen."""

    spans: list[Span] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    model: str | None = None
    embedding_inputs: int = 0

    def error(self, code: str, message: str, *, line: int | None, param: str | None = None) -> None:
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append({"code": code, "message": message, "param": param, "line": line})


def iter_lines(buf: bytes) -> Iterator[tuple[int, int, int]]:
    """(1-based line number, start, end) of every non-blank line."""
    pos, lineno, size = 0, 0, len(buf)
    while pos < size:
        end = buf.find(b"\n", pos)
        if end < 0:
            end = size
        lineno += 1
        if buf[pos:end].strip():
            yield lineno, pos, end
        pos = end + 1


def request_spans(buf: bytes) -> list[Span]:
    """Byte spans of the request lines of an already validated file."""
    return [(start, end) for _, start, end in iter_lines(buf)]


def check_input(
    buf: bytes,
    *,
    endpoint: str,
    max_requests: int,
    max_bytes: int | None = None,
    max_embedding_inputs: int | None = None,
) -> InputCheck:
    """Validate every line of a batch input file, and its size against the limits given."""
    result = InputCheck()
    if max_bytes is not None and len(buf) > max_bytes:
        result.error(
            "file_too_large",
            f"The input file has {len(buf)} bytes; the limit is {max_bytes}.",
            line=None,
        )
    seen: set[str] = set()
    for lineno, start, end in iter_lines(buf):
        result.spans.append((start, end))
        try:
            line = orjson.loads(buf[start:end])
        except orjson.JSONDecodeError:
            result.error("invalid_json", f"Line {lineno} is not valid JSON.", line=lineno)
            continue
        if not isinstance(line, dict):
            result.error("invalid_json", f"Line {lineno} is not a JSON object.", line=lineno)
            continue
        _check_line(result, line, lineno, endpoint, seen)
    if not result.spans:
        result.error("empty_file", "The input file is empty.", line=None)
    elif len(result.spans) > max_requests:
        result.error(
            "too_many_requests",
            f"The input file has {len(result.spans)} requests; the limit is {max_requests}.",
            line=None,
        )
    if max_embedding_inputs is not None and result.embedding_inputs > max_embedding_inputs:
        result.error(
            "too_many_embedding_inputs",
            f"The batch has {result.embedding_inputs} embedding inputs; the limit is"
            f" {max_embedding_inputs}.",
            line=None,
        )
    return result


def _check_line(
    result: InputCheck, line: dict[str, Any], lineno: int, endpoint: str, seen: set[str]
) -> None:
    missing = [name for name in REQUIRED_FIELDS if line.get(name) in (None, "")]
    for name in missing:
        result.error(
            "missing_required_parameter",
            f"Line {lineno} is missing required parameter '{name}'.",
            line=lineno,
            param=name,
        )
    custom_id, body = line.get("custom_id"), line.get("body")
    if "custom_id" not in missing:
        if not isinstance(custom_id, str):
            result.error(
                "invalid_custom_id", f"Line {lineno}: custom_id must be a string.", line=lineno
            )
        elif custom_id in seen:
            result.error(
                "duplicate_custom_id",
                f"Line {lineno}: custom_id {custom_id!r} is used more than once.",
                line=lineno,
                param="custom_id",
            )
        else:
            seen.add(custom_id)
    if "method" not in missing and line["method"] != "POST":
        result.error(
            "invalid_method",
            f"Line {lineno}: method must be POST, not {line['method']!r}.",
            line=lineno,
            param="method",
        )
    if "url" not in missing and line["url"] != endpoint:
        result.error(
            "mismatched_endpoint",
            f"Line {lineno}: url {line['url']!r} does not match the batch endpoint {endpoint!r}.",
            line=lineno,
            param="url",
        )
    if "body" not in missing:
        if not isinstance(body, dict):
            result.error("invalid_body", f"Line {lineno}: body must be a JSON object.", line=lineno)
        else:
            if result.model is None and isinstance(body.get("model"), str):
                result.model = body["model"]
            if endpoint == "/v1/embeddings":
                result.embedding_inputs += _embedding_inputs(body.get("input"))


def _embedding_inputs(value: Any) -> int:
    """How many vectors an embeddings ``input`` asks for (a token list is one)."""
    if isinstance(value, list) and value and not all(isinstance(v, int) for v in value):
        return len(value)
    return 1
