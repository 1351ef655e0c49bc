"""What ``<name>_input_file`` does with an upstream it cannot send: no rows, or bad rows.

An empty upstream is a normal day for a partitioned pipeline: with ``allow_empty`` the
step records an empty job (no file, no batch) and the results are empty, with a note.
Otherwise, and for bad rows, the step fails with a ``dg.Failure`` whose description
starts with the fix and lists the problems in the upstream's terms (its columns, its
rows' index labels); its metadata says the same (``inference_batch/fix``,
``inference_batch/problems``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from logging import Logger

import dagster as dg
import pandas as pd

from .batch_record import BatchJob
from .cost_estimate import BudgetExceeded
from .errors import InvalidBatchInput
from .metadata_set import InferenceBatchMetadataSet
from .spec import InferenceBatchSpec

EMPTY_NOTE = "the upstream had no rows: no file uploaded, no batch created; results are empty"


def invalid_input_failure(
    error: InvalidBatchInput, spec: InferenceBatchSpec, *, empty: bool
) -> dg.Failure:
    """The step failure for input the provider would refuse, the fix first.

    Args:
        error: The problems found.
        spec: The pipeline.
        empty: Whether the upstream had no rows.

    Returns:
        A ``dg.Failure`` naming the fix, then the problems; the same in its metadata.

    Example:
        >>> from dagster_inference_batch.spec import RequestOptions
        >>> spec = InferenceBatchSpec(name="llm", upstream_key=dg.AssetKey("tickets"),
        ...     requests=RequestOptions(prompt_column="text", model="m"))
        >>> error = InvalidBatchInput(["row index 1 (custom_id 't1'): duplicate custom_id"])
        >>> print(invalid_input_failure(error, spec, empty=False).description)
        Fix these rows of tickets, then materialize llm_submit again.
        invalid batch input (1 problem):
          - row index 1 (custom_id 't1'): duplicate custom_id
    """
    upstream = spec.upstream_key.to_user_string()
    if empty:
        fix = (
            f"{upstream} has no rows. Pass allow_empty=True to build_inference_batch_assets "
            "to materialize empty results instead (the default when partitioned), or give "
            f"{upstream} rows."
        )
    elif isinstance(error, BudgetExceeded):
        fix = f"Raise max_cost_usd, or send fewer rows of {upstream}."
    else:
        fix = f"Fix these rows of {upstream}, then materialize {spec.submit_job_name} again."
    return dg.Failure(
        description=f"{fix}\n{error}",
        metadata=InferenceBatchMetadataSet(fix=fix, problems=error.problems).to_metadata(),
    )


@contextmanager
def invalid_input_as_failure(spec: InferenceBatchSpec, upstream: pd.DataFrame) -> Iterator[None]:
    """Turn an ``InvalidBatchInput`` raised inside into ``invalid_input_failure``.

    Args:
        spec: The pipeline.
        upstream: The upstream's rows.

    Raises:
        dg.Failure: The block raised ``InvalidBatchInput``.

    Example:
        >>> from dagster_inference_batch.spec import RequestOptions
        >>> spec = InferenceBatchSpec(name="llm", upstream_key=dg.AssetKey("tickets"),
        ...     requests=RequestOptions(prompt_column="text", model="m"))
        >>> with invalid_input_as_failure(spec, pd.DataFrame()):
        ...     pass
    """
    try:
        yield
    except InvalidBatchInput as error:
        raise invalid_input_failure(error, spec, empty=len(upstream) == 0) from None


def empty_input_file(
    spec: InferenceBatchSpec,
    partition: str | None,
    provider: Mapping[str, str],
    log: Logger | dg.DagsterLogManager,
) -> dg.MaterializeResult:
    """The ``<name>_input_file`` materialization of an upstream with no rows.

    Args:
        spec: The pipeline (it allows empty input).
        partition: The partition, or None.
        provider: The provider's metadata.
        log: The step's log.

    Returns:
        A materialization recording an empty job (no file, no batch), with a note.

    Example:
        >>> from dagster_inference_batch.spec import RequestOptions
        >>> spec = InferenceBatchSpec(name="llm", upstream_key=dg.AssetKey("tickets"),
        ...     requests=RequestOptions(prompt_column="text", model="m"))
        >>> result = empty_input_file(spec, "2026-11-01", {}, dg.get_dagster_logger())
        >>> result.metadata["inference_batch/request_count"]
        0
    """
    batch_name = spec.batch_key.to_user_string()
    job = BatchJob(
        endpoint=spec.requests.endpoint,
        idempotency_key=f"{batch_name}|{partition or ''}|empty",
        metadata={"dagster_asset": batch_name, "dagster_partition": partition or ""},
        empty_input=True,
    )
    log.info(EMPTY_NOTE)
    return dg.MaterializeResult(
        metadata={
            **InferenceBatchMetadataSet(
                request_count=0, shard_count=0, note=EMPTY_NOTE, job=job.to_dict()
            ).to_metadata(),
            **provider,
        }
    )
