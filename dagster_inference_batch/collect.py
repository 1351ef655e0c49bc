"""The ``<name>_results`` asset: wait a little for the batches, then join every answer.

If the batches are still running after ``wait_seconds`` (or an expired remainder is
due to be resubmitted), the step ends without materializing: downstream assets in the
run are skipped and the pipeline's sensor requests the results run later.
"""

from collections.abc import Iterator

import dagster as dg
import pandas as pd

from .checks import evaluate_results_checks
from .content import ContentParser, parse_content_columns
from .errors import BatchFailedError, BatchWaitTimeout
from .metadata import KINDS, results_metadata, token_usage
from .resource import InferenceBatchResource
from .state import latest_job, next_action, partition_of


def build_results_asset(
    name: str,
    *,
    results_key: dg.AssetKey,
    batch_key: dg.AssetKey,
    upstream_key: dg.AssetKey,
    id_column: str,
    parse_content: ContentParser | None,
    check_specs: list[dg.AssetCheckSpec],
    partitions_def: dg.PartitionsDefinition | None,
    resource_key: str,
    group_name: str | None,
    max_attempts: int,
    max_failure_rate: float,
    wait_seconds: float,
) -> dg.AssetsDefinition:
    """``<name>_results`` with its two checks, both optional outputs of one step."""

    @dg.multi_asset(
        name=results_key.path[-1],
        outs={
            results_key.path[-1]: dg.AssetOut(
                key=results_key,
                is_required=False,  # not materialized while the batches still run
                description="One row per input row: the answer, its status and token counts.",
                group_name=group_name,
                kinds=KINDS,
            )
        },
        ins={"upstream": dg.AssetIn(key=upstream_key)},
        deps=[batch_key],
        check_specs=check_specs,
        can_subset=True,  # so that the checks, too, may be left out
        partitions_def=partitions_def,
        required_resource_keys={resource_key},
    )
    def results(
        context: dg.AssetExecutionContext, upstream: pd.DataFrame
    ) -> Iterator[dg.Output | dg.AssetCheckResult]:
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
            output_name=results_key.path[-1],
            metadata={**results_metadata(frame, job, cost), **resource.provider_metadata()},
        )
        for check in evaluate_results_checks(name, frame, upstream[id_column], max_failure_rate):
            if dg.AssetCheckKey(results_key, check.check_name) in context.selected_asset_check_keys:
                yield check

    return results
