"""One pipeline's specification, built and validated once and read by every builder.

``build_inference_batch_assets`` turns its keyword arguments into an
``InferenceBatchSpec``; the asset, results, checks, sensor and cancel builders take the
spec, so the asset keys, the request options and the limits are computed and checked
in this one place.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import dagster as dg
import pandas as pd

from .content import ContentParser
from .event_ledger import EventLogLedger
from .metadata import KINDS
from .on_time_check import OnTimeOptions
from .providers import DEFAULT_PROVIDER, ProviderProfile
from .request_lines import CHAT_ENDPOINT, EncodedRequests, build_requests, check_prompt_source
from .schedules import ScheduleOptions
from .structured_output import DEFAULT_RETRY_PROMPT_SUFFIX, StructuredOutput, structured_output
from .upload_queue import UPLOAD_SECONDS_ALLOWED, EventLogUploadQueue

if TYPE_CHECKING:
    from .resource import InferenceBatchResource

DEFAULT_BUDGET_SECONDS = 30.0  # a whole tick; the daemon gives a sensor tick 60 s
DEFAULT_PROGRESS_STEP_PERCENT = 5.0  # record progress when it moved this much ...
DEFAULT_PROGRESS_STEP_SECONDS = 600.0  # ... or this long after the last record

UpstreamLike = dg.AssetsDefinition | dg.AssetSpec | dg.AssetKey | str | Sequence[str]
MessagesFn = Callable[[dict[str, Any]], list[dict[str, Any]]]


def upstream_key_of(upstream: UpstreamLike) -> dg.AssetKey:
    """The asset key of ``upstream``.

    Args:
        upstream: An asset, an asset spec, an asset key, or anything
            ``dg.AssetKey.from_coercible`` takes (``"reviews"``, ``["raw", "reviews"]``).

    Returns:
        Its ``dg.AssetKey``.

    Example:
        >>> upstream_key_of(["raw", "reviews"]).to_user_string()
        'raw/reviews'
    """
    if isinstance(upstream, dg.AssetsDefinition | dg.AssetSpec):
        return upstream.key
    return dg.AssetKey.from_coercible(upstream)


@dataclass(frozen=True)
class RequestOptions:
    """How each upstream row becomes a request line (the arguments of ``build_requests``).

    Exactly one of ``prompt_column``, ``messages`` and ``body_column`` gives the content.

    Args:
        id_column: Column holding each row's ``custom_id``.
        endpoint: The Batch API endpoint every line targets.
        model: Model set in every body.
        prompt_column: Column holding each row's prompt text.
        messages: Function of a row (as a dict) returning its chat messages.
        body_column: Column holding each row's ready request body.
        system_prompt: System message put before each prompt.
        body_params: Further body fields (``max_tokens``, ...) for every line.
        response_model: A Pydantic model class or a JSON schema dict the answers must
            match; held as a ``StructuredOutput``.

    Raises:
        ValueError: None, or more than one, of the three content sources is given.

    Example:
        >>> options = RequestOptions(prompt_column="text", model="m")
        >>> len(options.build(pd.DataFrame({"custom_id": ["a"], "text": ["Hi"]})))
        1
        >>> RequestOptions()
        Traceback (most recent call last):
        ...
        ValueError: pass exactly one of prompt_column, messages or body_column
    """

    id_column: str = "custom_id"
    endpoint: str = CHAT_ENDPOINT
    model: str | None = None
    prompt_column: str | None = None
    messages: MessagesFn | None = None
    body_column: str | None = None
    system_prompt: str | None = None
    body_params: Mapping[str, Any] | None = None
    response_model: Any = None

    def __post_init__(self) -> None:
        check_prompt_source(
            prompt_column=self.prompt_column, messages=self.messages, body_column=self.body_column
        )
        object.__setattr__(self, "response_model", structured_output(self.response_model))
        taken = sorted({"response_format", "text"} & set(self.body_params or {}))
        if self.response_model is not None and taken:
            raise ValueError(f"body_params may not set {taken[0]!r} beside response_model")

    @property
    def structured(self) -> StructuredOutput | None:
        """The answers' expected shape, or None."""
        return self.response_model

    def build(
        self, frame: pd.DataFrame, provider: str | ProviderProfile = DEFAULT_PROVIDER
    ) -> EncodedRequests:
        """The validated request lines of ``frame``'s rows.

        Args:
            frame: The upstream's rows, one request each.
            provider: The provider (how it takes structured output).

        Returns:
            The encoded lines, ready to shard and upload.

        Raises:
            InvalidBatchInput: A row cannot make a valid request line.
        """
        return build_requests(
            frame,
            id_column=self.id_column,
            endpoint=self.endpoint,
            model=self.model,
            prompt_column=self.prompt_column,
            messages=self.messages,
            body_column=self.body_column,
            system_prompt=self.system_prompt,
            body_params=self.body_params,
            response_model=self.response_model,
            provider=provider,
        )


@dataclass(frozen=True)
class PipelineLimits:
    """The limits and policies of a pipeline (the factory's arguments of the same names).

    Args:
        max_attempts: Attempts per request, the first included; expired or cancelled
            requests are resubmitted until then.
        cancel_superseded: A new submission of a partition cancels the batches its
            previous job still runs.
        max_failure_rate: Share of failed result rows above which the failure-rate
            check fails.
        results_wait_seconds: How long ``<name>_results`` waits for the batches before
            leaving them to the sensor.
        sensor_interval_seconds: Minimum seconds between sensor ticks.
        sensor_budget_seconds: Time a whole tick may take (refreshes stop at 3/4 of it).
        cancel_orphaned: Cancel the batches of a partition that no longer exists.
        progress_step_percent: Record progress when it moved this much ...
        progress_step_seconds: ... or this long after the last record.
        incremental: Send only rows whose request has no stored answer (each distinct
            request once) and join the stored answers back.
        max_cost_usd: Refuse, before upload, a job whose worst-case estimate is above it.
        retry_invalid_output: Resubmit the rows whose answer does not validate against
            the ``response_model`` (``invalid_output``) as a new attempt, within
            ``max_attempts``.
        retry_prompt_suffix: Added to those rows' prompt when they are retried (None:
            resent as they were).
        max_invalid_output_rate: Share of ``invalid_output`` rows above which the
            valid-output check warns.

    Raises:
        ValueError: ``max_attempts`` is below 1, a progress step or ``max_cost_usd`` is
            negative.

    Example:
        >>> PipelineLimits(max_attempts=3).max_attempts
        3
        >>> PipelineLimits(max_attempts=0)
        Traceback (most recent call last):
        ...
        ValueError: max_attempts must be at least 1
    """

    max_attempts: int = 2
    cancel_superseded: bool = True
    max_failure_rate: float = 0.05
    results_wait_seconds: float = 30.0
    sensor_interval_seconds: int = 30
    sensor_budget_seconds: float = DEFAULT_BUDGET_SECONDS
    cancel_orphaned: bool = True
    progress_step_percent: float = DEFAULT_PROGRESS_STEP_PERCENT
    progress_step_seconds: float = DEFAULT_PROGRESS_STEP_SECONDS
    incremental: bool = True
    max_cost_usd: float | None = None
    retry_invalid_output: bool = False
    retry_prompt_suffix: str | None = DEFAULT_RETRY_PROMPT_SUFFIX
    max_invalid_output_rate: float = 0.02
    allow_empty: bool | None = None  # None: allowed for a partitioned pipeline only

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_invalid_output_rate <= 1.0:
            raise ValueError(
                f"max_invalid_output_rate must be between 0 and 1, got "
                f"{self.max_invalid_output_rate}"
            )
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.max_cost_usd is not None and self.max_cost_usd < 0:
            raise ValueError(f"max_cost_usd must be >= 0, got {self.max_cost_usd}")
        if self.progress_step_percent < 0 or self.progress_step_seconds < 0:
            raise ValueError("progress_step_percent and progress_step_seconds must be >= 0")


ASSET_ROLES = ("input_file", "batch", "results")
RESULTS_FORMATS = ("dataframe", "parquet_dataset")
RESULTS_FOLDER = "inference_batch_results"  # under the instance's storage directory
OVERRIDABLE = frozenset({"description", "owners", "tags", "metadata", "group_name", "code_version"})


@dataclass(frozen=True)
class InferenceBatchSpec:
    """Everything that defines one pipeline: its name, keys, requests, partitions, limits.

    The asset keys and job names derive from ``name`` (and ``key_prefix``), here only.

    Args:
        name: The pipeline's name, the prefix of its assets, jobs and sensor.
        upstream_key: The asset whose DataFrame rows are submitted.
        requests: How each row becomes a request line.
        limits: Attempts, waits, sensor timing and cancel policies.
        parse_content: Turns each answer into extra result columns.
        partitions_def: The partitions of the pipeline's assets and jobs, if any.
        resource_key: The key of the ``InferenceBatchResource`` the steps use.
        group_name: The asset group of the pipeline's assets.
        key_prefix: Put before each asset key (``("team", "llm")`` gives
            ``team/llm/<name>_batch``); the jobs and the sensor take it too, joined by
            ``__``.
        owners: Owners of the three assets (``"team:ml"``, an email).
        tags: Tags of the three assets.
        asset_spec_overrides: Per asset (``input_file``, ``batch`` or ``results``), more
            ``@dg.asset`` arguments: ``description``, ``owners``, ``tags``, ``metadata``,
            ``group_name``, ``code_version``.
        results_format: ``dataframe`` (the results asset's value is one pandas DataFrame)
            or ``parquet_dataset`` (the join is streamed into a Parquet dataset and the
            value is its ``ResultsDataset`` handle).
        results_location: Where ``parquet_dataset`` results go: a local path or an
            fsspec URL (``s3://bucket/prefix``); default: the instance's storage
            directory. Each materialization writes its own folder below it.
        schedule: When ``<name>_schedule`` submits, if there is one.
        on_time: The thresholds of ``<name>_batch_on_time``; None: no such check.
        results_freshness: Whether ``<name>_results`` gets a freshness policy (only with a
            schedule: results are due a schedule gap plus the completion window later).

    Raises:
        ValueError: An override of an unknown asset or argument; an unknown
            ``results_format``, or ``parquet_dataset`` with ``parse_content``.

    Example:
        >>> spec = InferenceBatchSpec(
        ...     name="llm", upstream_key=dg.AssetKey("prompts"),
        ...     requests=RequestOptions(prompt_column="prompt", model="m"))
        >>> spec.batch_key.to_user_string(), spec.collect_job_name
        ('llm_batch', 'llm_collect')
        >>> prefixed = InferenceBatchSpec(
        ...     name="llm", upstream_key=dg.AssetKey("prompts"),
        ...     requests=RequestOptions(prompt_column="prompt", model="m"), key_prefix=("ml",))
        >>> prefixed.batch_key.to_user_string(), prefixed.collect_job_name
        ('ml/llm_batch', 'ml__llm_collect')
    """

    name: str
    upstream_key: dg.AssetKey
    requests: RequestOptions
    limits: PipelineLimits = field(default_factory=PipelineLimits)
    parse_content: ContentParser | None = None
    partitions_def: dg.PartitionsDefinition | None = None
    resource_key: str = "inference_batch"
    group_name: str | None = None
    key_prefix: tuple[str, ...] = ()
    owners: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)
    asset_spec_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    results_format: str = "dataframe"
    results_location: str | None = None
    schedule: ScheduleOptions | None = None
    on_time: OnTimeOptions | None = field(default_factory=OnTimeOptions)
    results_freshness: bool = True

    def __post_init__(self) -> None:
        if self.requests.structured is not None and self.parse_content is not None:
            raise ValueError(
                "pass response_model or parse_content, not both: response_model parses "
                "and validates each answer itself"
            )
        if self.limits.retry_invalid_output and self.requests.structured is None:
            raise ValueError("retry_invalid_output=True needs a response_model to validate with")
        if self.results_format not in RESULTS_FORMATS:
            raise ValueError(
                f"results_format: {self.results_format!r} is not one of {list(RESULTS_FORMATS)}"
            )
        if self.results_format == "parquet_dataset" and self.parse_content is not None:
            raise ValueError("parse_content works with results_format='dataframe' only")
        if self.results_format == "parquet_dataset" and self.requests.structured is not None:
            raise ValueError(
                "response_model works with results_format='dataframe' only: the streamed "
                "Parquet dataset keeps each answer's content as text, unvalidated"
            )
        for role, override in self.asset_spec_overrides.items():
            if role not in ASSET_ROLES:
                raise ValueError(
                    f"asset_spec_overrides: unknown asset {role!r}; use one of {list(ASSET_ROLES)}"
                )
            unknown = sorted(set(override) - OVERRIDABLE)
            if unknown:
                raise ValueError(
                    f"asset_spec_overrides[{role!r}]: cannot set {unknown}; "
                    f"use {sorted(OVERRIDABLE)}"
                )

    def _key(self, suffix: str) -> dg.AssetKey:
        return dg.AssetKey([*self.key_prefix, f"{self.name}_{suffix}"])

    def _job_name(self, suffix: str) -> str:
        return f"{self.qualified_name}_{suffix}"

    @property
    def qualified_name(self) -> str:
        """``name`` after the ``key_prefix`` parts, joined by ``__``: unique in a code
        location (op, job and sensor names, run tags)."""
        return "__".join([*self.key_prefix, self.name])

    @property
    def input_file_key(self) -> dg.AssetKey:
        """``<name>_input_file``: the uploaded request lines."""
        return self._key("input_file")

    @property
    def batch_key(self) -> dg.AssetKey:
        """``<name>_batch``: the provider batches and the recorded ``BatchJob``."""
        return self._key("batch")

    @property
    def results_key(self) -> dg.AssetKey:
        """``<name>_results``: one row per submitted row."""
        return self._key("results")

    @property
    def submit_job_name(self) -> str:
        """``<name>_submit``: materializes the input file and the batch."""
        return self._job_name("submit")

    @property
    def collect_job_name(self) -> str:
        """``<name>_collect``: materializes the results; the sensor requests it."""
        return self._job_name("collect")

    @property
    def cancel_job_name(self) -> str:
        """``<name>_cancel``: cancels a partition's batches in flight."""
        return self._job_name("cancel")

    @property
    def sensor_name(self) -> str:
        """``<name>_sensor``: watches the batches."""
        return self._job_name("sensor")

    @property
    def partitioned(self) -> bool:
        """Whether the pipeline's assets are partitioned."""
        return self.partitions_def is not None

    @property
    def allows_empty(self) -> bool:
        """Whether an upstream with no rows makes empty results (no batch) instead of
        failing: ``allow_empty``, by default only for a partitioned pipeline (a quiet day
        is normal, an empty table for the whole pipeline is a mistake)."""
        allowed = self.limits.allow_empty
        return self.partitioned if allowed is None else allowed

    def asset_options(self, role: str) -> dict[str, Any]:
        """``@dg.asset`` keyword arguments of one of the pipeline's assets.

        Args:
            role: ``input_file``, ``batch`` or ``results``.

        Returns:
            ``key``, ``partitions_def``, ``group_name``, ``kinds``, ``owners``, ``tags``
            and ``required_resource_keys``, with the role's overrides applied.
        """
        freshness = self.freshness_policy() if role == "results" else None
        return {
            **({"freshness_policy": freshness} if freshness is not None else {}),
            "key": self._key(role),
            "partitions_def": self.partitions_def,
            "group_name": self.group_name,
            "kinds": KINDS,
            "owners": list(self.owners) or None,
            "tags": dict(self.tags) or None,
            "required_resource_keys": {self.resource_key},
            **self.asset_spec_overrides.get(role, {}),
        }

    def freshness_policy(self) -> Any:
        """The freshness policy of ``<name>_results``, from the schedule and the window.

        Results are due the longest gap between two ticks, plus the completion window
        (WARN), plus the on-time check's margin (fail), after the last materialization.

        Returns:
            A ``dg.FreshnessPolicy.time_window``, or None: no schedule, turned off, or a
            Dagster without that API.

        Example:
            >>> spec = InferenceBatchSpec(
            ...     name="llm", upstream_key=dg.AssetKey("prompts"),
            ...     requests=RequestOptions(prompt_column="prompt"),
            ...     schedule=ScheduleOptions("0 6 * * *"))
            >>> spec.freshness_policy() is not None
            True
        """
        time_window = getattr(getattr(dg, "FreshnessPolicy", None), "time_window", None)
        if self.schedule is None or not self.results_freshness or time_window is None:
            return None
        on_time = self.on_time or OnTimeOptions()
        due = self.schedule.longest_gap() + timedelta(seconds=on_time.completion_window_seconds)
        return time_window(
            fail_window=due + timedelta(seconds=on_time.error_margin_seconds),
            warn_window=due if on_time.error_margin_seconds > 0 else None,
        )

    def resource(
        self, context: dg.AssetExecutionContext | dg.OpExecutionContext | dg.SensorEvaluationContext
    ) -> InferenceBatchResource:
        """The pipeline's ``InferenceBatchResource`` in a step's or a tick's context.

        Args:
            context: The context of a step or sensor tick that requires ``resource_key``.

        Returns:
            The resource bound under ``resource_key``.
        """
        return getattr(context.resources, self.resource_key)

    def results_url(self, context: dg.AssetExecutionContext) -> str:
        """The folder a ``parquet_dataset`` materialization writes: below
        ``results_location`` (or the instance's storage directory), by asset key,
        partition and run, so no materialization overwrites another's rows.

        Args:
            context: The ``<name>_results`` step.

        Returns:
            A local path or an fsspec URL.
        """
        base = self.results_location or os.path.join(
            context.instance.storage_directory(), RESULTS_FOLDER
        )
        partition = context.partition_key if context.has_partition_key else "__unpartitioned"
        parts = [*self.results_key.path, partition, context.run.run_id]
        return "/".join([base.rstrip("/"), *parts])

    def upload_queue(
        self, context: dg.AssetExecutionContext, partition: str | None
    ) -> EventLogUploadQueue:
        """The queue of uploads waiting for the provider's upload limit, in the event log.

        Args:
            context: The ``<name>_input_file`` step.
            partition: Its partition key, or None.

        Returns:
            An ``EventLogUploadQueue`` on ``input_file_key``, whose places go stale
            ``max_upload_wait`` (plus time to upload) after they are taken.
        """
        return EventLogUploadQueue(
            context.instance,
            self.input_file_key,
            partition,
            context.run.run_id,
            stale_after=self.resource(context).max_upload_wait + UPLOAD_SECONDS_ALLOWED,
        )

    def ledger(self, instance: dg.DagsterInstance, partition: str | None) -> EventLogLedger:
        """The event-log ledger of one partition's uploads and batches.

        Args:
            instance: The Dagster instance whose event log records them.
            partition: The partition key, or None for an unpartitioned pipeline.

        Returns:
            An ``EventLogLedger`` on ``input_file_key`` and ``batch_key``.
        """
        return EventLogLedger(
            instance,
            partition=partition,
            input_file_key=self.input_file_key,
            batch_key=self.batch_key,
        )
