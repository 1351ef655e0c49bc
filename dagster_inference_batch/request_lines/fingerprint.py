"""Request fingerprints: which requests are the same question, whatever their custom_id.

A fingerprint is the BLAKE2b (128-bit, hex) of the endpoint, a newline, and the body as
canonical JSON (orjson, keys sorted at every level), model included. Two lines with the
same fingerprint ask the same model the same thing, so one answer serves both (the answer
store of incremental runs is keyed by it). The fast line builder computes them from its
template (``TemplateFingerprints``, ``SplicedFingerprints``), and only when asked for;
other lines are fingerprinted from their bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import orjson

_DIGEST_SIZE = 16


def _hasher(endpoint: str) -> Any:
    return hashlib.blake2b(endpoint.encode() + b"\n", digest_size=_DIGEST_SIZE)


def fingerprint(endpoint: str, body: Any) -> str:
    """The fingerprint of one request.

    Args:
        endpoint: The url the request posts to.
        body: The request body (a JSON-able dict).

    Returns:
        32 hex digits.

    Example:
        >>> a = fingerprint("/v1/completions", {"model": "m", "prompt": "hi", "n": 1})
        >>> a == fingerprint("/v1/completions", {"n": 1, "prompt": "hi", "model": "m"})
        True
        >>> a == fingerprint("/v1/completions", {"model": "m2", "prompt": "hi", "n": 1})
        False
    """
    hasher = _hasher(endpoint)
    hasher.update(orjson.dumps(body, option=orjson.OPT_SORT_KEYS))
    return hasher.hexdigest()


def line_fingerprints(endpoint: str, lines: Iterable[bytes]) -> list[str]:
    """The fingerprints of encoded request lines (their ``body``; ``custom_id`` aside).

    Args:
        endpoint: The url the lines post to.
        lines: Compact JSON request lines.

    Returns:
        One fingerprint per line.

    Example:
        >>> line_fingerprints("/v1/completions",
        ...     [b'{"custom_id":"a","body":{"prompt":"hi","model":"m"}}']) == [
        ...     fingerprint("/v1/completions", {"model": "m", "prompt": "hi"})]
        True
    """
    return [fingerprint(endpoint, orjson.loads(line)["body"]) for line in lines]


class TemplateFingerprints:
    """Fingerprints of bodies that differ only in one string, from its JSON alone.

    Args:
        endpoint: The url the requests post to.
        body: The body with ``mark`` where the varying string goes.
        mark: A placeholder string found exactly once in ``body``.

    Example:
        >>> body = {"model": "m", "messages": [{"role": "user", "content": "@@"}]}
        >>> prints = TemplateFingerprints("/v1/chat/completions", body, "@@")
        >>> prints.of([b"Hi"]) == [fingerprint("/v1/chat/completions",
        ...     {"model": "m", "messages": [{"role": "user", "content": "Hi"}]})]
        True
    """

    def __init__(self, endpoint: str, body: Any, mark: str) -> None:
        head, tail = orjson.dumps(body, option=orjson.OPT_SORT_KEYS).split(mark.encode())
        self._prefix = _hasher(endpoint)
        self._prefix.update(head)
        self._tail = tail

    def of(self, escaped: Iterable[bytes]) -> list[str]:
        """Fingerprints for each varying string, given JSON-escaped without its quotes.

        Args:
            escaped: The strings' JSON contents, as the line builder splices them in.

        Returns:
            One fingerprint each.
        """
        prefix, tail = self._prefix, self._tail
        out = []
        for value in escaped:
            hasher = prefix.copy()
            hasher.update(value)
            hasher.update(tail)
            out.append(hasher.hexdigest())
        return out


class SplicedFingerprints:
    """The fingerprints of lines built from one template, worked out when first asked for.

    Each line holds its varying string (JSON-escaped) from ``starts[i]`` up to its last
    ``tail`` bytes; ``prints`` hashes it with the body around it.

    Args:
        prints: The body template's fingerprints.
        starts: Where each line's string begins.
        tail: How many bytes of every line follow the string.

    Example:
        >>> body = {"model": "m", "messages": [{"role": "user", "content": "@@"}]}
        >>> prints = TemplateFingerprints("/v1/chat/completions", body, "@@")
        >>> lines = [b'{"id":"a","q":"Hi"}', b'{"id":"bb","q":"Yo"}']
        >>> SplicedFingerprints(prints, np.array([15, 16]), 2)(lines) == prints.of([b"Hi", b"Yo"])
        True
    """

    def __init__(self, prints: TemplateFingerprints, starts: np.ndarray, tail: int) -> None:
        self._prints, self._starts, self._tail = prints, starts, tail

    def __call__(self, lines: Sequence[bytes]) -> list[str]:
        """One fingerprint per line (the lines the starts were taken from)."""
        tail = self._tail
        return self._prints.of(
            memoryview(line)[start : len(line) - tail]
            for line, start in zip(lines, self._starts.tolist(), strict=True)
        )
