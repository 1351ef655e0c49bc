"""The asset factory: input file, batch and results assets, checks, sensor and jobs.

``build_inference_batch_assets`` validates its arguments once into an
``InferenceBatchSpec`` (``spec.py``) and hands that spec to each builder:

- ``<name>_input_file`` builds, validates, shards and uploads the request lines;
- ``<name>_batch`` creates the batches (idempotently) and records the ``BatchJob``;
- ``<name>_results`` (``results_asset.py``) joins every answer to its input row, once
  the batches are done; its checks are in ``checks.py``;
- ``<name>_sensor`` (``sensor/``) watches the batches and requests the results run;
- ``<name>_cancel`` (``cancel.py``) cancels a partition's batches.

The job travels between them through the event log (see ``state.py``).
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import dagster as dg
import pandas as pd
from pydantic import Field

from .cancel import build_cancel_job
from .checks import build_results_checks
from .content import ContentParser
from .input_failures import empty_input_file, invalid_input_as_failure
from .metadata import batch_metadata, incremental_metadata, input_file_metadata
from .metadata_set import InferenceBatchMetadataSet
from .on_time_check import OnTimeOptions, on_time_spec, submitted_result
from .request_lines import CHAT_ENDPOINT
from .results_asset import build_results_asset
from .schedules import ScheduleLike, build_submit_schedule, schedule_options
from .sensor import build_sensor
from .spec import (
    DEFAULT_BUDGET_SECONDS,
    DEFAULT_PROGRESS_STEP_PERCENT,
    DEFAULT_PROGRESS_STEP_SECONDS,
    InferenceBatchSpec,
    MessagesFn,
    PipelineLimits,
    RequestOptions,
    UpstreamLike,
    upstream_key_of,
)
from .state import latest_job, partition_of
from .structured_output import DEFAULT_RETRY_PROMPT_SUFFIX
from .supersede import cancel_superseded_batches, recorded_job
from .valid_output_check import build_valid_output_check

# What ``dg.define_asset_job`` returns. Dagster resolves it to a ``dg.JobDefinition``
# when the ``Definitions`` are built and does not export its class.
AssetJob: TypeAlias = Any


@dataclass(frozen=True)
class InferenceBatchDefinitions:
    """Everything one pipeline defines; ``defs`` merges it into a code location.

    Args:
        spec: The pipeline's specification (name, keys, requests, limits).
        assets: ``<name>_input_file``, ``<name>_batch`` and ``<name>_results``.
        asset_checks: The results' checks.
        sensor: ``<name>_sensor``.
        submit_job: ``<name>_submit``.
        collect_job: ``<name>_collect``.
        cancel_job: ``<name>_cancel``.
        schedule: ``<name>_schedule``, with a ``schedule`` argument.

    Example:
        >>> @dg.asset
        ... def reviews() -> pd.DataFrame:
        ...     return pd.DataFrame({"custom_id": ["r1"], "text": ["Great!"]})
        >>> pipeline = build_inference_batch_assets(
        ...     "reviews_llm", upstream=reviews, prompt_column="text", model="m")
        >>> pipeline.name, pipeline.batch_key.to_user_string()
        ('reviews_llm', 'reviews_llm_batch')
        >>> [job.name for job in pipeline.jobs]
        ['reviews_llm_submit', 'reviews_llm_collect', 'reviews_llm_cancel']
        >>> defs = dg.Definitions.merge(dg.Definitions(assets=[reviews]), pipeline.defs)
    """

    spec: InferenceBatchSpec
    assets: list[dg.AssetsDefinition]
    asset_checks: list[dg.AssetChecksDefinition]
    sensor: dg.SensorDefinition
    submit_job: AssetJob
    collect_job: AssetJob
    cancel_job: dg.JobDefinition
    schedule: dg.ScheduleDefinition | None = None

    @property
    def name(self) -> str:
        """The pipeline's name, the prefix of its assets, jobs and sensor."""
        return self.spec.name

    @property
    def check_specs(self) -> list[dg.AssetCheckSpec]:
        """The specs of ``asset_checks``: ``<name>_results_complete`` (blocking) and
        ``<name>_results_failure_rate``. (``<name>_batch_on_time`` is declared on the
        batch asset itself: see ``on_time_check``.)"""
        return [spec for check in self.asset_checks for spec in check.check_specs]

    @property
    def input_file_key(self) -> dg.AssetKey:
        """``<name>_input_file``."""
        return self.spec.input_file_key

    @property
    def batch_key(self) -> dg.AssetKey:
        """``<name>_batch``."""
        return self.spec.batch_key

    @property
    def results_key(self) -> dg.AssetKey:
        """``<name>_results``."""
        return self.spec.results_key

    @property
    def jobs(self) -> list[AssetJob | dg.JobDefinition]:
        """``<name>_submit`` (input file + batch), ``<name>_collect`` (results, run by the
        sensor) and ``<name>_cancel``."""
        return [self.submit_job, self.collect_job, self.cancel_job]

    @property
    def defs(self) -> dg.Definitions:
        """Assets, asset checks, sensor, jobs and schedule as one ``dg.Definitions``.

        Resources are the caller's: bind an ``InferenceBatchResource`` under the
        pipeline's resource key.
        """
        return dg.Definitions(
            assets=self.assets,
            asset_checks=self.asset_checks,
            sensors=[self.sensor],
            jobs=self.jobs,
            schedules=[self.schedule] if self.schedule is not None else None,
        )


class InputFileConfig(dg.Config):
    """Run options of ``<name>_input_file``."""

    refresh: bool = Field(
        default=False,
        description="Send every row, even those with an answer in the answer store.",
    )


def build_input_file_asset(spec: InferenceBatchSpec) -> dg.AssetsDefinition:
    """``<name>_input_file``: build, validate, shard and upload the upstream's rows.

    Args:
        spec: The pipeline.

    Returns:
        The asset; its materialization records the uploaded job.
    """
    batch_name = spec.batch_key.to_user_string()

    @dg.asset(
        ins={"upstream": dg.AssetIn(key=spec.upstream_key)},
        **{
            "description": f"Request lines built from {spec.upstream_key.to_user_string()}, "
            "validated, sharded and uploaded to the Batch API (Files API, purpose 'batch').",
            **spec.asset_options("input_file"),
        },
    )
    def input_file(
        context: dg.AssetExecutionContext, config: InputFileConfig, upstream: pd.DataFrame
    ) -> dg.MaterializeResult:
        partition = partition_of(context)
        resource = spec.resource(context)
        if len(upstream) == 0 and spec.allows_empty:
            return empty_input_file(spec, partition, resource.provider_metadata(), context.log)
        with invalid_input_as_failure(spec, upstream):
            encoded = spec.requests.build(upstream, resource.provider)
        with (
            resource.get_client(upload_queue=spec.upload_queue(context, partition)) as client,
            invalid_input_as_failure(spec, upstream),
        ):
            job = client.upload(
                encoded,
                metadata={"dagster_asset": batch_name, "dagster_partition": partition or ""},
                idempotency_key=f"{batch_name}|{partition or ''}|{encoded.sha256()[:16]}"
                + (f"|refresh:{context.run.run_id[:8]}" if config.refresh else ""),
                ledger=spec.ledger(context.instance, partition),
                incremental=spec.limits.incremental,
                refresh=config.refresh,
                max_cost_usd=spec.limits.max_cost_usd,
            )
        context.log.info(
            f"uploaded {job.request_count} of {len(encoded)} requests in {len(job.shards)} "
            f"file(s); {job.rows_reused} rows answered already"
            if spec.limits.incremental
            else f"uploaded {len(encoded)} requests in {len(job.shards)} file(s)"
        )
        return dg.MaterializeResult(
            metadata={
                **input_file_metadata(encoded, job),
                **incremental_metadata(job, resource.cost),
                **resource.provider_metadata(),
            }
        )

    return input_file


def build_batch_asset(spec: InferenceBatchSpec) -> dg.AssetsDefinition:
    """``<name>_batch``: create one batch per uploaded file and record the ``BatchJob``.

    With ``cancel_superseded``, a job for the partition with other rows cancels the
    batches its previous job still runs (``inference_batch/superseded``). With
    ``spec.on_time``, it declares ``<name>_batch_on_time`` (passed on submission; the
    sensor evaluates it as it refreshes the job).

    Args:
        spec: The pipeline.

    Returns:
        The asset.
    """
    input_file_key, batch_key = spec.input_file_key, spec.batch_key
    check_specs = [on_time_spec(spec.qualified_name, batch_key)] if spec.on_time else []

    @dg.asset(
        deps=[input_file_key],
        check_specs=check_specs or None,
        **{
            "description": "Provider batches running the uploaded request lines. A "
            "materialization records what was submitted (submitted_status, provider_host, "
            "batch_ids, expires_at, the BatchJob); live progress is in this asset's "
            "observations (Events tab; Plots tab), recorded by the sensor.",
            **spec.asset_options("batch"),
        },
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
            if spec.limits.cancel_superseded
            else None
        )
        resource = spec.resource(context)
        with resource.get_client() as client:
            job = client.create(uploaded.job, ledger=spec.ledger(context.instance, partition))
            superseded = (
                cancel_superseded_batches(client, previous, job, context.log) if previous else None
            )
        if job.empty_input:
            context.log.info("the upstream had no rows: no batch to create")
        elif job.answered_without_batches:
            context.log.info(
                f"every row was answered already ({job.rows_reused} reused): no batch to create"
            )
        else:
            context.log.info(f"batches {', '.join(job.batch_ids)} are {job.status}")
        return dg.MaterializeResult(
            metadata={
                **batch_metadata(job, resource.provider_label, resource.dashboard_url),
                **resource.provider_metadata(),
                **InferenceBatchMetadataSet(
                    idempotency=client.idempotency, superseded=superseded or None
                ).to_metadata(),
            },
            check_results=[submitted_result(spec.qualified_name)] if check_specs else None,
        )

    return batch


def build_pipeline(spec: InferenceBatchSpec) -> InferenceBatchDefinitions:
    """Every definition of the pipeline ``spec`` describes.

    Args:
        spec: The pipeline, validated.

    Returns:
        Its assets, checks, sensor and jobs.
    """
    collect_job = dg.define_asset_job(
        spec.collect_job_name,
        selection=dg.AssetSelection.assets(spec.results_key),
        description=f"Collect {spec.results_key.to_user_string()}; requested by "
        f"{spec.sensor_name}.",
    )
    submit_job = dg.define_asset_job(
        spec.submit_job_name,
        selection=dg.AssetSelection.assets(spec.input_file_key, spec.batch_key),
        description=f"Upload and submit {spec.upstream_key.to_user_string()}'s requests.",
    )
    return InferenceBatchDefinitions(
        spec=spec,
        assets=[build_input_file_asset(spec), build_batch_asset(spec), build_results_asset(spec)],
        asset_checks=[
            *build_results_checks(
                spec.name,
                results_key=spec.results_key,
                batch_key=spec.batch_key,
                partitions_def=spec.partitions_def,
                max_failure_rate=spec.limits.max_failure_rate,
            ),
            *valid_output_checks(spec),
        ],
        sensor=build_sensor(spec),
        submit_job=submit_job,
        collect_job=collect_job,
        cancel_job=build_cancel_job(spec),
        schedule=build_submit_schedule(spec, spec.schedule, submit_job) if spec.schedule else None,
    )


def valid_output_checks(spec: InferenceBatchSpec) -> list[dg.AssetChecksDefinition]:
    """``<name>_results_valid_output`` for a pipeline with a ``response_model``, else none.

    Args:
        spec: The pipeline.

    Returns:
        The check, in a list.

    Example:
        >>> from dagster_inference_batch.spec import RequestOptions
        >>> spec = InferenceBatchSpec(name="llm", upstream_key=dg.AssetKey("prompts"),
        ...     requests=RequestOptions(prompt_column="p", response_model={"type": "object"}))
        >>> [next(iter(c.check_specs)).name for c in valid_output_checks(spec)]
        ['llm_results_valid_output']
    """
    if spec.requests.structured is None:
        return []
    return [
        build_valid_output_check(
            spec.name,
            results_key=spec.results_key,
            partitions_def=spec.partitions_def,
            max_invalid_rate=spec.limits.max_invalid_output_rate,
        )
    ]


def build_inference_batch_assets(
    name: str,
    *,
    upstream: UpstreamLike,
    id_column: str = "custom_id",
    prompt_column: str | None = None,
    messages: MessagesFn | None = None,
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
    incremental: bool = True,
    max_cost_usd: float | None = None,
    response_model: Any = None,
    retry_invalid_output: bool = False,
    retry_prompt_suffix: str | None = DEFAULT_RETRY_PROMPT_SUFFIX,
    max_invalid_output_rate: float = 0.02,
    allow_empty: bool | None = None,
    group_name: str | None = None,
    key_prefix: str | Sequence[str] | None = None,
    owners: Sequence[str] | None = None,
    tags: Mapping[str, str] | None = None,
    asset_spec_overrides: Mapping[str, Mapping[str, Any]] | None = None,
    results_format: str = "dataframe",
    results_location: str | None = None,
    schedule: ScheduleLike | None = None,
    on_time: OnTimeOptions | bool = True,
    results_freshness: bool = True,
) -> InferenceBatchDefinitions:
    """Assets, checks, a sensor and jobs that run ``upstream``'s rows through a Batch API.

    The arguments are validated once, into an ``InferenceBatchSpec``
    (``InferenceBatchDefinitions.spec``), which every definition is built from.

    Args:
        name: The pipeline's name, the prefix of its assets, jobs and sensor.
        upstream: The asset (or its key) holding a pandas DataFrame, one row per request.
        id_column: Column holding each row's ``custom_id``.
        prompt_column: Column holding each row's prompt text.
        messages: Function of a row (as a dict) returning its chat messages.
        body_column: Column holding each row's ready request body.
        model: Model set in every body.
        body_params: Further body fields (``max_tokens``, ...) for every request.
        endpoint: The Batch API endpoint.
        system_prompt: System message put before each prompt.
        parse_content: Turns each answer into extra result columns (``json.loads`` for
            structured output, say).
        partitions_def: Partitions of the assets and jobs (daily, static, dynamic).
        resource_key: The key of the ``InferenceBatchResource`` the steps use.
        max_attempts: Attempts per request; expired or cancelled requests are
            resubmitted until then.
        cancel_superseded: A new submission of a partition with other rows cancels the
            batches its previous job still runs (``inference_batch/superseded``).
        max_failure_rate: Share of failed result rows the failure-rate check allows.
        results_wait_seconds: How long ``<name>_results`` waits for the batches before
            leaving them to the sensor.
        sensor_interval_seconds: Minimum seconds between sensor ticks.
        sensor_budget_seconds: Time a whole tick may take (refreshes stop at 3/4 of it).
        cancel_orphaned: Cancel the batches of a partition that no longer exists.
        progress_step_percent: Record progress when it moved this much ...
        progress_step_seconds: ... or this long after the last record.
        incremental: Send only the rows whose request has no answer in the resource's
            answer store, each distinct request once; ``<name>_results`` joins the
            stored answers back (column ``source``). A run can set ``refresh`` in the
            config of ``<name>_input_file`` to send every row.
        max_cost_usd: Refuse, before anything is uploaded, a job whose worst-case cost
            estimate is above it.
        response_model: A Pydantic (v2) model class or a JSON schema dict: each request
            asks for JSON of that shape (``response_format`` from it, as the resource's
            provider takes it), each answer is validated (``invalid_output`` when it is
            not JSON or does not validate) and its fields become typed columns of
            ``<name>_results``; adds the check ``<name>_results_valid_output``. Not with
            ``parse_content``.
        retry_invalid_output: The sensor resubmits the ``invalid_output`` rows as a new
            attempt, within ``max_attempts`` (costs another request per row).
        retry_prompt_suffix: Added to a retried row's prompt (None: resent as it was).
        max_invalid_output_rate: Share of ``invalid_output`` rows above which
            ``<name>_results_valid_output`` warns.
        allow_empty: An upstream with no rows materializes empty results with a note
            and creates no batch; otherwise it fails the run. Default: allowed when
            partitioned (a quiet day), not when unpartitioned.
        group_name: The asset group of the pipeline's assets.
        key_prefix: Put before the three asset keys (a string or its parts); the jobs'
            and the sensor's names take it too, joined by ``__``.
        owners: Owners of the three assets (``"team:ml"``, an email).
        tags: Tags of the three assets.
        asset_spec_overrides: Per asset (``"input_file"``, ``"batch"``, ``"results"``),
            more ``@dg.asset`` arguments: ``description``, ``owners``, ``tags``,
            ``metadata``, ``group_name`` or ``code_version``.
        results_format: ``"dataframe"``: ``<name>_results`` is one pandas DataFrame;
            ``"parquet_dataset"``: the join streams into a Parquet dataset (for results
            beyond memory) and the asset's value is a ``ResultsDataset`` handle.
        results_location: Where ``parquet_dataset`` results go: a local path or an
            fsspec URL such as ``s3://bucket/prefix`` (default: the Dagster instance's
            storage directory).
        schedule: A cron string (``"0 6 * * *"``) or ``ScheduleOptions`` (cron, timezone,
            default status, static partitions to submit): adds ``<name>_schedule`` for
            ``<name>_submit``, stopped by default. Time-window partitions: each tick
            submits the partition that just closed; static and dynamic: those not yet
            submitted.
        on_time: ``<name>_batch_on_time`` on ``<name>_batch``, evaluated by the sensor:
            True (default thresholds: WARN at 75% of the completion window, ERROR an
            hour past it), ``OnTimeOptions``, or False for no check.
        results_freshness: With a schedule, a freshness policy on ``<name>_results``:
            due a schedule gap plus the completion window after the last one.

    Returns:
        The pipeline's definitions; ``.defs`` merges them into a code location.

    Raises:
        ValueError: Not exactly one of ``prompt_column``, ``messages`` and
            ``body_column``; ``max_attempts`` below 1; a negative progress step or
            ``max_cost_usd``; an override of an unknown asset or argument; an invalid
            cron string or schedule option; an unknown ``results_format``, or
            ``parquet_dataset`` with ``parse_content`` or ``response_model``.

    Example:
        >>> @dg.asset
        ... def reviews() -> pd.DataFrame:
        ...     return pd.DataFrame({"review_id": ["r1", "r2"], "text": ["Great!", "Meh."]})
        >>> pipeline = build_inference_batch_assets(
        ...     "review_insights", upstream=reviews, id_column="review_id",
        ...     prompt_column="text", model="meta-llama/llama-3.1-8b-instruct/fp-8",
        ...     body_params={"max_tokens": 200})
        >>> [a.key.to_user_string() for a in pipeline.assets]
        ['review_insights_input_file', 'review_insights_batch', 'review_insights_results']
        >>> pipeline.sensor.name, pipeline.spec.limits.max_attempts
        ('review_insights_sensor', 2)
        >>> from dagster_inference_batch import InferenceBatchResource
        >>> defs = dg.Definitions.merge(
        ...     dg.Definitions(assets=[reviews]),
        ...     pipeline.defs,
        ...     dg.Definitions(resources={"inference_batch": InferenceBatchResource(
        ...         api_key=dg.EnvVar("INFERENCE_API_KEY"))}))
    """
    spec = InferenceBatchSpec(
        name=name,
        upstream_key=upstream_key_of(upstream),
        requests=RequestOptions(
            id_column=id_column,
            endpoint=endpoint,
            model=model,
            prompt_column=prompt_column,
            messages=messages,
            body_column=body_column,
            system_prompt=system_prompt,
            body_params=body_params,
            response_model=response_model,
        ),
        limits=PipelineLimits(
            max_attempts=max_attempts,
            cancel_superseded=cancel_superseded,
            max_failure_rate=max_failure_rate,
            results_wait_seconds=results_wait_seconds,
            sensor_interval_seconds=sensor_interval_seconds,
            sensor_budget_seconds=sensor_budget_seconds,
            cancel_orphaned=cancel_orphaned,
            progress_step_percent=progress_step_percent,
            progress_step_seconds=progress_step_seconds,
            incremental=incremental,
            max_cost_usd=max_cost_usd,
            retry_invalid_output=retry_invalid_output,
            retry_prompt_suffix=retry_prompt_suffix,
            max_invalid_output_rate=max_invalid_output_rate,
            allow_empty=allow_empty,
        ),
        parse_content=parse_content,
        partitions_def=partitions_def,
        resource_key=resource_key,
        group_name=group_name,
        key_prefix=(key_prefix,) if isinstance(key_prefix, str) else tuple(key_prefix or ()),
        owners=tuple(owners or ()),
        tags=dict(tags or {}),
        asset_spec_overrides=dict(asset_spec_overrides or {}),
        results_format=results_format,
        results_location=results_location,
        schedule=schedule_options(schedule),
        on_time=OnTimeOptions() if on_time is True else on_time or None,
        results_freshness=results_freshness,
    )
    return build_pipeline(spec)
