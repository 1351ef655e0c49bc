"""The asset factory: input file, batch and results assets, checks, sensor and jobs.

``build_inference_batch_assets`` turns an upstream DataFrame asset into three assets:

- ``<name>_input_file`` builds, validates, shards and uploads the request lines;
- ``<name>_batch`` creates the batches (idempotently) and records the ``BatchJob``;
- ``<name>_results`` joins every answer to its input row, once the batches are done.

The job travels between them through the event log (see ``state.py``); the sensor
(``sensor.py``) watches the batches and requests the results run when they finish.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dagster as dg
import pandas as pd

from .cancel import build_cancel_job
from .checks import build_results_checks
from .collect import build_results_asset
from .content import ContentParser
from .event_ledger import EventLogLedger
from .metadata import KINDS, batch_metadata, input_file_metadata
from .request_lines import CHAT_ENDPOINT, build_requests
from .resource import InferenceBatchResource
from .sensor import (
    DEFAULT_BUDGET_SECONDS,
    DEFAULT_PROGRESS_STEP_PERCENT,
    DEFAULT_PROGRESS_STEP_SECONDS,
    build_sensor,
)
from .state import latest_job, partition_of
from .supersede import SUPERSEDED_KEY, cancel_superseded_batches, recorded_job

if TYPE_CHECKING:
    from dagster._core.definitions.unresolved_asset_job_definition import (
        UnresolvedAssetJobDefinition,
    )

UpstreamLike = dg.AssetsDefinition | dg.AssetSpec | dg.AssetKey | str | Sequence[str]


@dataclass(frozen=True)
class InferenceBatchDefinitions:
    """Everything one pipeline defines; ``defs`` merges it into a code location.

    Example:
        >>> pipeline = build_inference_batch_assets(  # doctest: +SKIP
        ...     "reviews_llm", upstream="reviews", prompt_column="text", model="m")
        >>> defs = dg.Definitions.merge(my_defs, pipeline.defs)  # doctest: +SKIP
    """

    name: str
    assets: list[dg.AssetsDefinition]
    asset_checks: list[dg.AssetChecksDefinition]
    sensor: dg.SensorDefinition
    submit_job: "UnresolvedAssetJobDefinition"
    collect_job: "UnresolvedAssetJobDefinition"
    cancel_job: dg.JobDefinition

    @property
    def check_specs(self) -> list[dg.AssetCheckSpec]:
        """The specs of ``asset_checks``: ``<name>_results_complete`` (blocking) and
        ``<name>_results_failure_rate``."""
        return [spec for check in self.asset_checks for spec in check.check_specs]

    @property
    def input_file_key(self) -> dg.AssetKey:
        return dg.AssetKey(f"{self.name}_input_file")

    @property
    def batch_key(self) -> dg.AssetKey:
        return dg.AssetKey(f"{self.name}_batch")

    @property
    def results_key(self) -> dg.AssetKey:
        return dg.AssetKey(f"{self.name}_results")

    @property
    def jobs(self) -> "list[UnresolvedAssetJobDefinition | dg.JobDefinition]":
        """``<name>_submit`` (input file + batch), ``<name>_collect`` (results, run by the
        sensor) and ``<name>_cancel``."""
        return [self.submit_job, self.collect_job, self.cancel_job]

    @property
    def defs(self) -> dg.Definitions:
        """Assets, asset checks, sensor and jobs as one ``dg.Definitions``.

        Resources are the caller's: bind an ``InferenceBatchResource`` under the
        pipeline's resource key.
        """
        return dg.Definitions(
            assets=self.assets,
            asset_checks=self.asset_checks,
            sensors=[self.sensor],
            jobs=self.jobs,
        )


def _upstream_key(upstream: UpstreamLike) -> dg.AssetKey:
    if isinstance(upstream, dg.AssetsDefinition | dg.AssetSpec):
        return upstream.key
    return dg.AssetKey.from_coercible(upstream)


def build_inference_batch_assets(
    name: str,
    *,
    upstream: UpstreamLike,
    id_column: str = "custom_id",
    prompt_column: str | None = None,
    messages: Callable[[dict[str, Any]], list[dict[str, Any]]] | None = None,
    body_column: str | None = None,
    model: str | None = None,
    body_params: Mapping[str, Any] | None = None,
    endpoint: str = CHAT_ENDPOINT,
    system_prompt: str | None = None,
    parse_content: ContentParser | None = None,
    partitions_def: dg.PartitionsDefinition | None = None,
    resource_key: str = "inference_batch",
    max_attempts: int = 2,
    cancel_superseded: bool = True,
    max_failure_rate: float = 0.05,
    results_wait_seconds: float = 30.0,
    sensor_interval_seconds: int = 30,
    sensor_budget_seconds: float = DEFAULT_BUDGET_SECONDS,
    cancel_orphaned: bool = True,
    progress_step_percent: float = DEFAULT_PROGRESS_STEP_PERCENT,
    progress_step_seconds: float = DEFAULT_PROGRESS_STEP_SECONDS,
    group_name: str | None = None,
) -> InferenceBatchDefinitions:
    """Assets, checks, a sensor and jobs that run ``upstream``'s rows through a Batch API.

    ``upstream`` is an asset (or key) holding a pandas DataFrame, one row per request,
    with ids in ``id_column``. Give exactly one of ``prompt_column``, ``messages`` (a
    function of the row returning chat messages) or ``body_column`` (ready bodies);
    ``model`` and ``body_params`` go into every body. ``parse_content`` turns each
    answer into extra result columns (e.g. ``json.loads`` for structured output).
    ``resource_key`` names an ``InferenceBatchResource``. Expired or cancelled requests
    are resubmitted until ``max_attempts``. With ``cancel_superseded`` a new submission
    of a partition with other rows cancels the batches its previous job still runs
    (``inference_batch/superseded``). ``<name>_results`` waits
    ``results_wait_seconds`` for the batches and otherwise leaves them to the sensor.

    Example:
        >>> pipeline = build_inference_batch_assets(
        ...     "review_insights", upstream="reviews", id_column="review_id",
        ...     prompt_column="text", model="meta-llama/llama-3.1-8b-instruct/fp-8",
        ...     body_params={"max_tokens": 200})
        >>> [a.key.to_user_string() for a in pipeline.assets]
        ['review_insights_input_file', 'review_insights_batch', 'review_insights_results']
        >>> defs = dg.Definitions.merge(
        ...     pipeline.defs,
        ...     dg.Definitions(resources={"inference_batch": InferenceBatchResource(
        ...         api_key=dg.EnvVar("INFERENCE_API_KEY"))}))
    """
    if sum(x is not None for x in (prompt_column, messages, body_column)) != 1:
        raise ValueError("pass exactly one of prompt_column, messages or body_column")
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    upstream_key = _upstream_key(upstream)
    input_file_key = dg.AssetKey(f"{name}_input_file")
    batch_key = dg.AssetKey(f"{name}_batch")
    results_key = dg.AssetKey(f"{name}_results")
    request_options: dict[str, Any] = dict(
        id_column=id_column,
        endpoint=endpoint,
        model=model,
        prompt_column=prompt_column,
        messages=messages,
        body_column=body_column,
        system_prompt=system_prompt,
        body_params=body_params,
    )
    common: dict[str, Any] = dict(
        partitions_def=partitions_def,
        group_name=group_name,
        kinds=KINDS,
        required_resource_keys={resource_key},
    )

    def resource_of(context: dg.AssetExecutionContext) -> InferenceBatchResource:
        return getattr(context.resources, resource_key)

    def ledger_of(context: dg.AssetExecutionContext) -> EventLogLedger:
        return EventLogLedger(
            context.instance,
            partition=partition_of(context),
            input_file_key=input_file_key,
            batch_key=batch_key,
        )

    @dg.asset(
        name=input_file_key.path[-1],
        ins={"upstream": dg.AssetIn(key=upstream_key)},
        description=f"Request lines built from {upstream_key.to_user_string()}, validated, "
        "sharded and uploaded to the Batch API (Files API, purpose 'batch').",
        **common,
    )
    def input_file(
        context: dg.AssetExecutionContext, upstream: pd.DataFrame
    ) -> dg.MaterializeResult:
        encoded = build_requests(upstream, **request_options)
        partition = partition_of(context)
        resource = resource_of(context)
        with resource.get_client() as client:
            job = client.upload(
                encoded,
                metadata={
                    "dagster_asset": batch_key.to_user_string(),
                    "dagster_partition": partition or "",
                },
                idempotency_key=f"{batch_key.to_user_string()}|{partition or ''}|"
                f"{encoded.sha256()[:16]}",
                ledger=ledger_of(context),
            )
        context.log.info(f"uploaded {len(encoded)} requests in {len(job.shards)} file(s)")
        return dg.MaterializeResult(
            metadata={**input_file_metadata(encoded, job), **resource.provider_metadata()}
        )

    @dg.asset(
        name=batch_key.path[-1],
        deps=[input_file_key],
        description="Provider batches running the uploaded request lines; metadata holds "
        "the BatchJob, observations plot progress.",
        **common,
    )
    def batch(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        partition = partition_of(context)
        uploaded = latest_job(context.instance, input_file_key, partition)
        if uploaded is None:
            raise dg.Failure(
                f"no upload recorded for {input_file_key.to_user_string()}"
                f"{f' partition {partition}' if partition else ''}: materialize it first"
            )
        previous = (
            recorded_job(context.instance, batch_key, partition, context.log)
            if cancel_superseded
            else None
        )
        resource = resource_of(context)
        with resource.get_client() as client:
            job = client.create(uploaded.job, ledger=ledger_of(context))
            superseded = (
                cancel_superseded_batches(client, previous, job, context.log) if previous else None
            )
        context.log.info(f"batches {', '.join(job.batch_ids)} are {job.status}")
        return dg.MaterializeResult(
            metadata={
                **batch_metadata(job),
                **resource.provider_metadata(),
                "inference_batch/idempotency": client.idempotency,
                **({SUPERSEDED_KEY: dg.MetadataValue.json(superseded)} if superseded else {}),
            }
        )

    collect_job = dg.define_asset_job(
        f"{name}_collect",
        selection=dg.AssetSelection.assets(results_key),
        description=f"Collect {results_key.to_user_string()}; requested by {name}_sensor.",
    )
    return InferenceBatchDefinitions(
        name=name,
        assets=[
            input_file,
            batch,
            build_results_asset(
                name,
                results_key=results_key,
                batch_key=batch_key,
                upstream_key=upstream_key,
                request_options=request_options,
                parse_content=parse_content,
                partitions_def=partitions_def,
                resource_key=resource_key,
                group_name=group_name,
                max_attempts=max_attempts,
                wait_seconds=results_wait_seconds,
            ),
        ],
        asset_checks=build_results_checks(
            name,
            results_key=results_key,
            batch_key=batch_key,
            partitions_def=partitions_def,
            max_failure_rate=max_failure_rate,
        ),
        sensor=build_sensor(
            name,
            input_file_key=input_file_key,
            batch_key=batch_key,
            results_key=results_key,
            collect_job_name=collect_job.name,
            resource_key=resource_key,
            partitions_def=partitions_def,
            max_attempts=max_attempts,
            interval_seconds=sensor_interval_seconds,
            budget_seconds=sensor_budget_seconds,
            cancel_orphaned=cancel_orphaned,
            progress_step_percent=progress_step_percent,
            progress_step_seconds=progress_step_seconds,
        ),
        submit_job=dg.define_asset_job(
            f"{name}_submit",
            selection=dg.AssetSelection.assets(input_file_key, batch_key),
            description=f"Upload and submit {upstream_key.to_user_string()}'s requests.",
        ),
        collect_job=collect_job,
        cancel_job=build_cancel_job(
            name, batch_key=batch_key, resource_key=resource_key, partitions_def=partitions_def
        ),
    )
