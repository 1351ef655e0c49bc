"""The ``<name>_cancel`` job: cancel the in-flight batches of one partition."""

import dagster as dg

from .metadata import batch_metadata
from .metadata_set import InferenceBatchMetadataSet
from .spec import InferenceBatchSpec
from .state import latest_job, partition_of

_CANCELLING = ("cancelling", "cancelled")


def _cancel_batches(context: dg.OpExecutionContext, spec: InferenceBatchSpec) -> None:
    """Cancel the partition's batches in flight and record it on ``<name>_batch``."""
    partition = partition_of(context)
    where = f" partition {partition}" if partition else ""
    recorded = latest_job(context.instance, spec.batch_key, partition)
    if recorded is None:
        raise dg.Failure(f"no batch recorded for {spec.batch_key.to_user_string()}{where}")
    resource = spec.resource(context)
    with resource.get_client() as client:
        job = client.refresh(recorded.job)
        if job.is_final:
            context.log.info(f"nothing to cancel{where}: the batches are {job.status}")
            return
        live = {s.batch_id for s in job.current_shards if not s.is_final}
        job = client.cancel(job)
    asked = [s for s in job.current_shards if s.batch_id in live]
    cancelled = [s.batch_id for s in asked if s.status in _CANCELLING]
    finished = [f"{s.batch_id} ({s.status})" for s in asked if s.status not in _CANCELLING]
    if finished:
        context.log.info(
            f"already finished before the cancel reached them{where}: {', '.join(finished)}"
        )
    if not cancelled:
        context.log.info(f"nothing cancelled{where}: every batch finished meanwhile")
        return
    context.log.info(f"cancelling {', '.join(b for b in cancelled if b)}{where}")
    context.log_event(
        dg.AssetMaterialization(
            asset_key=spec.batch_key,
            partition=partition,
            description="cancel requested; finished results are kept",
            metadata={
                **batch_metadata(job, resource.provider_label, resource.dashboard_url),
                **resource.provider_metadata(),
                **InferenceBatchMetadataSet(
                    cancel_requested=True, cancelled_batch_ids=cancelled
                ).to_metadata(),
            },
        )
    )


def build_cancel_job(spec: InferenceBatchSpec) -> dg.JobDefinition:
    """A job (partitioned like the assets) that cancels the selected partition's batches.

    The cancel is recorded as a ``<name>_batch`` materialization marked
    ``inference_batch/cancel_requested``, listing the batches it actually cancelled
    (``inference_batch/cancelled_batch_ids``): the sensor then collects what finished
    instead of resubmitting the rest. A batch that finished between the refresh and the
    cancel (the provider answers 409) is left as it is; when every batch did, nothing is
    recorded.

    Args:
        spec: The pipeline.

    Returns:
        ``<name>_cancel``, one op ``<name>_cancel_batches``.

    Example:
        >>> from dagster_inference_batch.spec import InferenceBatchSpec, RequestOptions
        >>> spec = InferenceBatchSpec(
        ...     name="llm", upstream_key=dg.AssetKey("prompts"),
        ...     requests=RequestOptions(prompt_column="prompt"))
        >>> build_cancel_job(spec).name
        'llm_cancel'
    """

    @dg.op(name=f"{spec.qualified_name}_cancel_batches", required_resource_keys={spec.resource_key})
    def cancel_batches(context: dg.OpExecutionContext) -> None:
        _cancel_batches(context, spec)

    @dg.job(
        name=spec.cancel_job_name,
        partitions_def=spec.partitions_def,
        description=f"Cancel the in-flight batches of {spec.batch_key.to_user_string()}.",
    )
    def cancel_job() -> None:
        cancel_batches()

    return cancel_job
