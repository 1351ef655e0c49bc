"""The ``<name>_cancel`` job: cancel the in-flight batches of one partition."""

import dagster as dg

from .metadata import batch_metadata
from .resource import InferenceBatchResource
from .state import CANCEL_KEY, latest_job, partition_of

CANCELLED_KEY = "inference_batch/cancelled_batch_ids"
_CANCELLING = ("cancelling", "cancelled")


def build_cancel_job(
    name: str,
    *,
    batch_key: dg.AssetKey,
    resource_key: str,
    partitions_def: dg.PartitionsDefinition | None,
) -> dg.JobDefinition:
    """A job (partitioned like the assets) that cancels the selected partition's batches.

    The cancel is recorded as a ``<name>_batch`` materialization marked
    ``inference_batch/cancel_requested``, listing the batches it actually cancelled: the
    sensor then collects what finished instead of resubmitting the rest. A batch that
    finished between the refresh and the cancel (the provider answers 409) is left as it
    is; when every batch did, nothing is recorded.
    """

    @dg.op(name=f"{name}_cancel_batches", required_resource_keys={resource_key})
    def cancel_batches(context: dg.OpExecutionContext) -> None:
        partition = partition_of(context)
        where = f" partition {partition}" if partition else ""
        recorded = latest_job(context.instance, batch_key, partition)
        if recorded is None:
            raise dg.Failure(f"no batch recorded for {batch_key.to_user_string()}{where}")
        resource: InferenceBatchResource = getattr(context.resources, resource_key)
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
                asset_key=batch_key,
                partition=partition,
                description="cancel requested; finished results are kept",
                metadata={
                    **batch_metadata(job),
                    **resource.provider_metadata(),
                    CANCEL_KEY: True,
                    CANCELLED_KEY: cancelled,
                },
            )
        )

    @dg.job(
        name=f"{name}_cancel",
        partitions_def=partitions_def,
        description=f"Cancel the in-flight batches of {batch_key.to_user_string()}.",
    )
    def cancel_job() -> None:
        cancel_batches()

    return cancel_job
