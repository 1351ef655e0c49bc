"""Downloading a job's files: streamed to disk, and read again when they come up short.

A provider can serve a result file before it holds every line its counts promise; such
files are downloaded again (``SHORT_DOWNLOAD_RETRIES`` times) before the missing lines
count as missing requests. Input files are named by position, never by provider id.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import orjson

from .batch_record import BatchShard
from .errors import BatchAPIError
from .provider_calls import ProviderCalls
from .results import ResultFile

SHORT_DOWNLOAD_RETRIES = 2  # extra downloads of result files holding fewer lines than counted
CHUNK_BYTES = 1 << 20


def download_file(provider: ProviderCalls, file_id: str, path: Path) -> Path:
    """Stream one file's content to ``path`` (downloaded again whole when cut short).

    Args:
        provider: The client's calls.
        file_id: The provider's file id.
        path: Where to write it.

    Returns:
        ``path``.

    Raises:
        BatchAPIError: The download was refused or kept failing.
    """

    def fetch() -> Path:
        with provider.sdk.files.with_streaming_response.content(file_id) as response:
            with path.open("wb") as handle:
                for chunk in response.iter_bytes(chunk_size=CHUNK_BYTES):
                    handle.write(chunk)
        return path

    return provider.call(f"download {file_id}", fetch)


def download_result_files(
    provider: ProviderCalls, shards: list[BatchShard], folder: Path
) -> list[ResultFile]:
    """Each shard's output and error files, downloaded into ``folder`` concurrently.

    Args:
        provider: The client's calls.
        shards: The shards, of any attempts.
        folder: Where the files go.

    Returns:
        The files, shard by shard.

    Raises:
        BatchAPIError: A download failed.
    """
    numbered = list(enumerate(shards))
    fetched = provider.map(lambda item: _shard_result_files(provider, *item, folder), numbered)
    return [f for files in fetched for f in files]


def _shard_result_files(
    provider: ProviderCalls, number: int, shard: BatchShard, folder: Path
) -> list[ResultFile]:
    """One shard's result files; downloaded again while they hold fewer lines than the
    shard's counts promise."""
    promised = sum(int(shard.request_counts.get(k, 0) or 0) for k in ("completed", "failed"))
    for tries in range(SHORT_DOWNLOAD_RETRIES + 1):
        files = [
            ResultFile(
                path=download_file(provider, file_id, folder / f"result-{number}-{kind}.jsonl"),
                kind=kind,
                batch_id=shard.batch_id or "",
                attempt=shard.attempt,
            )
            for kind, file_id in (("output", shard.output_file_id), ("error", shard.error_file_id))
            if file_id
        ]
        lines = sum(count_lines(f.path) for f in files)
        if lines >= promised:
            return files
        if tries < SHORT_DOWNLOAD_RETRIES:
            provider.log.info(
                "batch %s: its files hold %d lines, its counts say %d; downloading them again",
                shard.batch_id,
                lines,
                promised,
            )
            time.sleep(provider.retry.delay(tries, BatchAPIError("short download")))
    provider.log.warning(
        "batch %s: its files still hold %d lines where its counts say %d; the "
        "requests without a line count as missing",
        shard.batch_id,
        lines,
        promised,
    )
    return files


def download_inputs(provider: ProviderCalls, shards: list[BatchShard], folder: Path) -> list[Path]:
    """The shards' input files, downloaded (named by position, never by provider id).

    Args:
        provider: The client's calls.
        shards: The shards.
        folder: Where the files go.

    Returns:
        One path per shard, in order.

    Raises:
        BatchAPIError: A download failed.
    """
    return provider.map(
        lambda numbered: download_file(
            provider, numbered[1].file_id, folder / f"input-{numbered[0]}-{numbered[1].index}.jsonl"
        ),
        list(enumerate(shards)),
    )


def input_records(paths: list[Path]) -> Iterator[tuple[str, bytes]]:
    """(custom_id, line) of each request line in the files, streamed.

    Example:
        >>> _ = Path("in.jsonl").write_bytes(b'{"custom_id": "a"}\\n\\n{"custom_id": "b"}\\n')
        >>> [custom_id for custom_id, _ in input_records([Path("in.jsonl")])]
        ['a', 'b']
    """
    for path in paths:
        with path.open("rb") as handle:
            for line in handle:
                if line.strip():
                    yield orjson.loads(line)["custom_id"], line


def count_lines(path: Path) -> int:
    """Lines in a JSONL file (a last line without its newline counts too).

    Example:
        >>> _ = Path("two.jsonl").write_bytes(b'{"a": 1}\\n{"a": 2}')
        >>> count_lines(Path("two.jsonl"))
        2
    """
    count, last = 0, b"\n"
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")
