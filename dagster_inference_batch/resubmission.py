"""Resubmission: which request lines of a final job go into its next attempt.

What expired, was cancelled or has no answer (and, on request, what failed retryably,
and the answers that do not validate against the ``response_model``), read back from the
provider's own copies of the input files, so the lines are resubmitted byte for byte as
last uploaded; a retried invalid answer's line may get a stricter prompt suffix.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import orjson

from .batch_record import BatchJob
from .consistency import absent_files
from .downloads import download_inputs, download_result_files, input_records
from .provider_calls import ProviderCalls
from .request_lines import EncodedRequests, encode_requests
from .result_join import leftover_custom_ids
from .results import parse_result_files
from .structured_output import INVALID_OUTPUT, StructuredOutput, with_prompt_suffix


def leftover_requests(
    provider: ProviderCalls,
    job: BatchJob,
    *,
    include_failed: bool,
    invalid_output: StructuredOutput | None = None,
    prompt_suffix: str | None = None,
) -> EncodedRequests | None:
    """The request lines of a final job's latest attempt still without an answer.

    Args:
        provider: Where the job's files are.
        job: A final job.
        include_failed: Also the requests that failed with a retryable status
            (408, 409, 429, 5xx).
        invalid_output: Also the requests whose best answer so far does not validate
            against it (``invalid_output``).
        prompt_suffix: Added to the prompt of those (``with_prompt_suffix``).

    Returns:
        The lines to resubmit, or None when nothing is left.
    """
    completed = include_failed or invalid_output is not None
    statuses = {"expired", "cancelled", *(["completed"] if completed else [])}
    # a shard taken as final without the files its counts promise has missing rows
    shards = [s for s in job.current_shards if s.status in statuses or absent_files(s)]
    if not shards:
        return None
    with tempfile.TemporaryDirectory(prefix="dib-resubmit-") as tmp:
        folder = Path(tmp)
        files = download_result_files(provider, job.shards, folder)
        frame = parse_result_files(files, invalid_output)
        inputs = download_inputs(provider, shards, folder)
        ids = [custom_id for custom_id, _ in input_records(inputs)]
        left = set(
            leftover_custom_ids(
                frame,
                ids,
                include_failed=include_failed,
                include_invalid=invalid_output is not None,
            )
        )
        if not left:
            return None
        invalid = set(frame.loc[frame["status"] == INVALID_OUTPUT, "custom_id"])
        suffixed = invalid if prompt_suffix else set()
        return encode_requests(
            (
                with_prompt_suffix(orjson.loads(line), prompt_suffix)  # type: ignore[arg-type]
                if custom_id in suffixed
                else orjson.loads(line)
                for custom_id, line in input_records(inputs)
                if custom_id in left
            ),
            endpoint=job.endpoint,
        )
