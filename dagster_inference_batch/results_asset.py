"""The ``<name>_results`` asset: wait a little for the batches, then join every answer.

If the batches are still running after ``results_wait_seconds`` (or an expired
remainder is due to be resubmitted), the step ends without materializing: downstream
assets in the run are skipped and the pipeline's sensor requests the results run later.

Answers are joined to the upstream's rows only when those rows are the ones submitted:
the step builds the request lines from the upstream as it is now and compares their
sha256 with the job's. If they differ it fails, naming the ids added, removed and
changed (found by reading the submitted input files back), instead of setting old
answers beside new questions. The materialization records the ``<name>_batch``
materialization it joined (``inference_batch/collected_storage_id``): the sensor's
definition of "collected" (``state.uncollected_jobs``).
"""

from collections.abc import Iterator

import dagster as dg
import pandas as pd

from .batch_record import BatchJob
from .client import InferenceBatchClient
from .content import parse_content_columns
from .errors import BatchAPIError, BatchFailedError, BatchWaitTimeout
from .input_failures import EMPTY_NOTE
from .job_manifest import read_manifest
from .metadata import results_metadata, reuse_metadata, summary_of
from .metadata_set import InferenceBatchMetadataSet
from .results import RESULT_COLUMNS
from .results_stream import ResultsDataset
from .results_tally import ResultsTally
from .row_changes import compare_lines
from .spec import InferenceBatchSpec
from .state import RecordedJob, invalid_retry_allowed, latest_job, next_action, partition_of
from .structured_output import INVALID_OUTPUT


def check_submitted_rows(
    client: InferenceBatchClient,
    recorded: RecordedJob,
    upstream: pd.DataFrame,
    spec: InferenceBatchSpec,
) -> None:
    """Check that ``upstream`` still builds the request lines the job submitted.

    The order of the rows aside: the same lines in another order pass.

    Args:
        client: The provider's client (reads the submitted input files back).
        recorded: The job being joined, as ``<name>_batch`` recorded it.
        upstream: The upstream's rows as they are now.
        spec: The pipeline.

    Raises:
        dg.Failure: The lines differ; it names what changed (metadata
            ``inference_batch/upstream_changed``) and what to do.
    """
    job = recorded.job
    encoded = spec.requests.build(upstream, client.profile)
    if job.sha256 is not None and encoded.sha256() == job.sha256:
        return
    upstream_name = spec.upstream_key.to_user_string()
    where = (
        f"the job recorded by {spec.batch_key.to_user_string()} (materialization "
        f"{recorded.storage_id}, job key {job.idempotency_key})"
    )
    advice = (
        f"The answers belong to the submitted rows, so they are not joined to the current "
        f"ones: materialize {spec.submit_job_name} ({spec.input_file_key.to_user_string()} and "
        f"{spec.batch_key.to_user_string()}) again to send "
        f"the current rows, or materialize {upstream_name} back to the submitted rows."
    )
    try:
        if job.manifest:  # incremental: not every row was uploaded; compare fingerprints
            manifest = read_manifest(job.manifest)
            changes = compare_lines(
                zip(manifest.custom_ids, map(str.encode, manifest.fingerprints), strict=True),
                encoded.custom_ids,
                [f.encode() for f in encoded.fingerprints],
            )
        else:
            changes = compare_lines(client.submitted_lines(job), encoded.custom_ids, encoded.lines)
    except BatchAPIError as exc:
        raise dg.Failure(
            description=f"{upstream_name} now builds other request lines than {where} "
            f"submitted (sha256 {encoded.sha256()[:16]}, submitted "
            f"{(job.sha256 or 'not recorded')[:16]}), and the submitted input files could not "
            f"be read to name the rows ({exc}). {advice}",
            metadata=InferenceBatchMetadataSet(upstream_changed={"error": str(exc)}).to_metadata(),
        ) from exc
    if not changes:
        return  # the same lines in another order (or a job recorded without its sha256)
    raise dg.Failure(
        description=f"{upstream_name} changed since its rows were submitted in {where}: "
        f"{changes.describe()}. {advice}",
        metadata=InferenceBatchMetadataSet(upstream_changed=changes.as_metadata()).to_metadata(),
    )


def _finished_job(
    context: dg.AssetExecutionContext,
    client: InferenceBatchClient,
    recorded: RecordedJob,
    spec: InferenceBatchSpec,
) -> BatchJob | None:
    """The job once its batches are done and nothing is left to resubmit; None (logged)
    when the sensor has to come back for it."""
    wait_seconds = spec.limits.results_wait_seconds
    results = spec.results_key.to_user_string()
    try:
        job = client.wait(
            recorded.job,
            poll_interval=min(5.0, max(0.5, wait_seconds / 10)),
            timeout=wait_seconds,
        )
    except BatchWaitTimeout as exc:
        context.log.info(
            f"{exc}. Not materializing now: the sensor {spec.sensor_name} will "
            f"materialize {results} when they finish."
        )
        return None
    max_attempts = spec.limits.max_attempts
    action = next_action(job, max_attempts=max_attempts, cancel_requested=recorded.cancel_requested)
    if action == "resubmit":
        context.log.info(
            f"batches ended {job.status}: the sensor {spec.sensor_name} will resubmit the "
            f"remainder (attempt {job.attempt + 1} of {max_attempts}) and then "
            f"materialize {results}."
        )
        return None
    return job


def _joined_results(
    context: dg.AssetExecutionContext,
    client: InferenceBatchClient,
    recorded: RecordedJob,
    job: BatchJob,
    upstream: pd.DataFrame,
    spec: InferenceBatchSpec,
) -> pd.DataFrame | ResultsDataset:
    """One row per submitted row, once the rows are known to be the submitted ones: a
    DataFrame, or the handle of the Parquet dataset they were streamed to."""
    if job.status != "failed":  # a failed job has nothing to join: results() says why
        check_submitted_rows(client, recorded, upstream, spec)
    id_column = spec.requests.id_column
    try:
        if spec.results_format == "parquet_dataset":
            url = spec.results_url(context)
            context.log.info(f"streaming the results into the Parquet dataset {url}")
            return client.results_dataset(
                job, url, inputs=upstream, id_column=id_column, keep_files=True
            )
        frame = client.results(
            job,
            inputs=upstream,
            id_column=id_column,
            response_model=spec.requests.structured,
            keep_files=True,  # deleted once materialized: a retry of invalid answers reads them
        )
    except BatchFailedError as exc:
        raise dg.Failure(
            description=str(exc),
            metadata=InferenceBatchMetadataSet(errors=exc.errors).to_metadata(),
        ) from exc
    if spec.parse_content is not None:
        frame = parse_content_columns(frame, spec.parse_content)
    return frame


def _invalid_retry_due(
    summary: ResultsTally, job: BatchJob, recorded: RecordedJob, spec: InferenceBatchSpec
) -> bool:
    """Whether the sensor is to retry invalid answers first (``retry_invalid_output``)."""
    return (
        spec.limits.retry_invalid_output
        and invalid_retry_allowed(
            job, max_attempts=spec.limits.max_attempts, cancel_requested=recorded.cancel_requested
        )
        and summary.statuses[INVALID_OUTPUT] > 0
    )


def empty_results(upstream: pd.DataFrame) -> pd.DataFrame:
    """The results of an upstream with no rows: its columns and the result columns.

    Example:
        >>> list(empty_results(pd.DataFrame({"ticket_id": []}))[["ticket_id", "status"]])
        ['ticket_id', 'status']
    """
    columns = [*RESULT_COLUMNS, "source"]
    return pd.concat(
        [pd.DataFrame(columns=columns), upstream.drop(columns=columns, errors="ignore")], axis=1
    )


def build_results_asset(spec: InferenceBatchSpec) -> dg.AssetsDefinition:
    """``<name>_results``, materialized only once the batches are done.

    Args:
        spec: The pipeline.

    Returns:
        The asset (``output_required=False``: a run while the batches still run
        materializes nothing).

    Example:
        >>> from dagster_inference_batch.spec import InferenceBatchSpec, RequestOptions
        >>> spec = InferenceBatchSpec(
        ...     name="llm", upstream_key=dg.AssetKey("prompts"),
        ...     requests=RequestOptions(prompt_column="prompt"))
        >>> build_results_asset(spec).key.to_user_string()
        'llm_results'
    """

    @dg.asset(
        ins={"upstream": dg.AssetIn(key=spec.upstream_key)},
        deps=[spec.batch_key],
        output_required=False,  # not materialized while the batches still run
        **{
            "description": "One row per submitted row: the answer, its status and token counts."
            + (
                " Streamed into a Parquet dataset: the value is its ResultsDataset handle."
                if spec.results_format == "parquet_dataset"
                else ""
            ),
            **spec.asset_options("results"),
        },
    )
    def results(context: dg.AssetExecutionContext, upstream: pd.DataFrame) -> Iterator[dg.Output]:
        recorded = latest_job(context.instance, spec.batch_key, partition_of(context))
        if recorded is None:
            raise dg.Failure(
                f"no batch recorded for {spec.batch_key.to_user_string()}: run it first"
            )
        resource = spec.resource(context)
        if recorded.job.empty_input:
            frame = empty_results(upstream)
            yield dg.Output(
                frame,
                metadata={
                    **results_metadata(frame, recorded, recorded.job, None),
                    **InferenceBatchMetadataSet(note=EMPTY_NOTE).to_metadata(),
                    **resource.provider_metadata(),
                },
            )
            return
        with resource.get_client() as client:
            job = _finished_job(context, client, recorded, spec)
            if job is None:
                return
            results = _joined_results(context, client, recorded, job, upstream, spec)
            summary = summary_of(results)
            if _invalid_retry_due(summary, job, recorded, spec):
                context.log.info(
                    f"{summary.statuses[INVALID_OUTPUT]} answers did not validate: the sensor "
                    f"{spec.sensor_name} will resubmit them (attempt {job.attempt + 1} of "
                    f"{spec.limits.max_attempts}) and then materialize "
                    f"{spec.results_key.to_user_string()}."
                )
                return  # the files stay: the retry and the merged results read them
            if client.delete_files_after_results:
                client.delete_files(job)
        cost = resource.cost(summary.batch_tokens)  # what this job paid for
        yield dg.Output(
            results,
            metadata={
                **results_metadata(summary, recorded, job, cost),
                **reuse_metadata(summary, job, resource.cost),
                **resource.provider_metadata(),
            },
        )

    return results
