"""The ``<name>_results`` asset: wait a little for the batches, then join every answer.

If the batches are still running after ``wait_seconds`` (or an expired remainder is
due to be resubmitted), the step ends without materializing: downstream assets in the
run are skipped and the pipeline's sensor requests the results run later.

Answers are joined to the upstream's rows only when those rows are the ones submitted:
the step builds the request lines from the upstream as it is now and compares their
sha256 with the job's. If they differ it fails, naming the ids added, removed and
changed (found by reading the submitted input files back), instead of setting old
answers beside new questions. The materialization records the ``<name>_batch``
materialization it joined (``inference_batch/collected_storage_id``): the sensor's
definition of "collected" (``state.uncollected_jobs``).
"""

from collections.abc import Iterator, Mapping
from typing import Any

import dagster as dg
import pandas as pd

from .client import InferenceBatchClient
from .content import ContentParser, parse_content_columns
from .errors import BatchAPIError, BatchFailedError, BatchWaitTimeout
from .metadata import KINDS, results_metadata, token_usage
from .request_lines import build_requests
from .resource import InferenceBatchResource
from .row_changes import compare_lines
from .state import RecordedJob, latest_job, next_action, partition_of

UPSTREAM_CHANGED_KEY = "inference_batch/upstream_changed"


def check_submitted_rows(
    client: InferenceBatchClient,
    recorded: RecordedJob,
    upstream: pd.DataFrame,
    request_options: Mapping[str, Any],
    *,
    name: str,
    upstream_key: dg.AssetKey,
    batch_key: dg.AssetKey,
) -> None:
    """Raise ``dg.Failure`` unless ``upstream`` still builds the request lines the job
    submitted (the order of the rows aside), naming what changed and what to do."""
    job = recorded.job
    encoded = build_requests(upstream, **request_options)
    if job.sha256 is not None and encoded.sha256() == job.sha256:
        return
    upstream_name = upstream_key.to_user_string()
    where = (
        f"the job recorded by {batch_key.to_user_string()} (materialization "
        f"{recorded.storage_id}, job key {job.idempotency_key})"
    )
    advice = (
        f"The answers belong to the submitted rows, so they are not joined to the current "
        f"ones: materialize {name}_submit ({name}_input_file and {name}_batch) again to send "
        f"the current rows, or materialize {upstream_name} back to the submitted rows."
    )
    try:
        changes = compare_lines(client.submitted_lines(job), encoded.custom_ids, encoded.lines)
    except BatchAPIError as exc:
        raise dg.Failure(
            description=f"{upstream_name} now builds other request lines than {where} "
            f"submitted (sha256 {encoded.sha256()[:16]}, submitted "
            f"{(job.sha256 or 'not recorded')[:16]}), and the submitted input files could not "
            f"be read to name the rows ({exc}). {advice}",
            metadata={UPSTREAM_CHANGED_KEY: dg.MetadataValue.json({"error": str(exc)})},
        ) from exc
    if not changes:
        return  # the same lines in another order (or a job recorded without its sha256)
    raise dg.Failure(
        description=f"{upstream_name} changed since its rows were submitted in {where}: "
        f"{changes.describe()}. {advice}",
        metadata={UPSTREAM_CHANGED_KEY: dg.MetadataValue.json(changes.as_metadata())},
    )


def build_results_asset(
    name: str,
    *,
    results_key: dg.AssetKey,
    batch_key: dg.AssetKey,
    upstream_key: dg.AssetKey,
    request_options: Mapping[str, Any],
    parse_content: ContentParser | None,
    partitions_def: dg.PartitionsDefinition | None,
    resource_key: str,
    group_name: str | None,
    max_attempts: int,
    wait_seconds: float,
) -> dg.AssetsDefinition:
    """``<name>_results``, materialized only once the batches are done.

    ``request_options`` are the keyword arguments of ``build_requests`` the pipeline
    submits with (``id_column``, ``prompt_column``, ``model``, ...).
    """
    id_column = request_options.get("id_column", "custom_id")

    @dg.asset(
        key=results_key,
        ins={"upstream": dg.AssetIn(key=upstream_key)},
        deps=[batch_key],
        output_required=False,  # not materialized while the batches still run
        description="One row per submitted row: the answer, its status and token counts.",
        partitions_def=partitions_def,
        group_name=group_name,
        kinds=KINDS,
        required_resource_keys={resource_key},
    )
    def results(context: dg.AssetExecutionContext, upstream: pd.DataFrame) -> Iterator[dg.Output]:
        partition = partition_of(context)
        recorded = latest_job(context.instance, batch_key, partition)
        if recorded is None:
            raise dg.Failure(f"no batch recorded for {batch_key.to_user_string()}: run it first")
        resource: InferenceBatchResource = getattr(context.resources, resource_key)
        with resource.get_client() as client:
            try:
                job = client.wait(
                    recorded.job,
                    poll_interval=min(5.0, max(0.5, wait_seconds / 10)),
                    timeout=wait_seconds,
                )
            except BatchWaitTimeout as exc:
                context.log.info(
                    f"{exc}. Not materializing now: the sensor {name}_sensor will "
                    f"materialize {results_key.to_user_string()} when they finish."
                )
                return
            action = next_action(
                job, max_attempts=max_attempts, cancel_requested=recorded.cancel_requested
            )
            if action == "resubmit":
                context.log.info(
                    f"batches ended {job.status}: the sensor {name}_sensor will resubmit the "
                    f"remainder (attempt {job.attempt + 1} of {max_attempts}) and then "
                    f"materialize {results_key.to_user_string()}."
                )
                return
            if job.status != "failed":  # a failed job has nothing to join: results() says why
                check_submitted_rows(
                    client,
                    recorded,
                    upstream,
                    request_options,
                    name=name,
                    upstream_key=upstream_key,
                    batch_key=batch_key,
                )
            try:
                frame = client.results(job, inputs=upstream, id_column=id_column)
            except BatchFailedError as exc:
                raise dg.Failure(
                    description=str(exc),
                    metadata={"inference_batch/errors": dg.MetadataValue.json(exc.errors)},
                ) from exc
        if parse_content is not None:
            frame = parse_content_columns(frame, parse_content)
        cost = resource.cost(token_usage(frame))
        yield dg.Output(
            frame,
            metadata={
                **results_metadata(frame, recorded, job, cost),
                **resource.provider_metadata(),
            },
        )

    return results
