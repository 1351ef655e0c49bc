"""``InferenceBatchComponent``: a batch pipeline declared in one ``defs.yaml``.

The component resolves its YAML into the arguments of ``build_inference_batch_assets``
and calls it, so its assets, checks, sensor and jobs are exactly the factory's. Prompts
can be Jinja templates over each row (``{{ row.product }}``), rendered per row with
``StrictUndefined``; ``response_format`` may be a JSON schema inline or a ``.json`` file
beside the ``defs.yaml``; an inline ``resource`` is bound under ``resource_key``.
"""

from __future__ import annotations

import importlib
import json
import re
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import dagster as dg
import jinja2
from dagster.components.resolved.core_models import (
    DailyPartitionsDefinitionModel,
    HourlyPartitionsDefinitionModel,
    StaticPartitionsDefinitionModel,
    TimeWindowPartitionsDefinitionModel,
    WeeklyPartitionsDefinitionModel,
    resolve_partitions_def,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ...assets import InferenceBatchDefinitions, build_inference_batch_assets
from ...on_time_check import OnTimeOptions
from ...request_lines import CHAT_ENDPOINT
from ...resource import InferenceBatchResource
from ...schedules import ScheduleOptions
from ...structured_output import DEFAULT_RETRY_PROMPT_SUFFIX
from .scaffolder import InferenceBatchScaffolder

_JINJA = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
_ENV_TEMPLATE = re.compile(r"^\s*\{\{\s*env(?:\.(\w+)|\(\s*['\"](\w+)['\"]\s*\))\s*\}\}\s*$")
_RESPONSE_FORMAT_TYPES = ("json_schema", "json_object", "text")
_PROMPT_FIELDS = ("prompt_column", "prompt_template", "messages")
_YAML_NAMES = {"llm_model": "model"}  # attribute -> YAML key, where they differ


class MessageTemplates:
    """Chat messages for one row: each content a Jinja template over ``row``.

    A template naming a column the row lacks fails (``StrictUndefined``), so a typo is
    an error on the input file, not an empty prompt.

    Args:
        messages: ``(role, content template)`` pairs, in order.

    Raises:
        jinja2.TemplateSyntaxError: A template does not parse.

    Example:
        >>> render = MessageTemplates([("system", "Be brief."), ("user", "Hi {{ row.name }}")])
        >>> render({"name": "Ada"})
        [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Hi Ada'}]
        >>> render({"nom": "Ada"})
        Traceback (most recent call last):
        ...
        ValueError: the user message template: 'dict object' has no attribute 'name' (the row's columns: nom)
    """

    def __init__(self, messages: Sequence[tuple[str, str]]) -> None:
        self.templates = [(role, _JINJA.from_string(content)) for role, content in messages]

    def __call__(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        """The row's messages, each content rendered with ``row`` in scope.

        Raises:
            ValueError: A template names something the row does not have.
        """
        messages = []
        for role, template in self.templates:
            try:
                messages.append({"role": role, "content": template.render(row=row)})
            except jinja2.UndefinedError as error:
                columns = ", ".join(map(str, row))
                raise ValueError(
                    f"the {role} message template: {error.message} (the row's columns: {columns})"
                ) from None
        return messages


def _template(context: dg.ResolutionContext, raw: str | None) -> str | None:
    """The raw template, checked to parse; it is rendered per row, not at load."""
    if raw is not None:
        _JINJA.parse(raw)
    return raw


def _doc(description: str) -> dg.Resolver:
    """The default resolution, with a description for the YAML schema (``dg``)."""
    return dg.Resolver.default(description=description)


def _resolved(context: dg.ResolutionContext, value: Any) -> Any:
    """The value, its templates already rendered (``inject_before_resolve``)."""
    return value


def _upstream_key(context: dg.ResolutionContext, raw: str) -> dg.AssetKey:
    return dg.AssetKey.from_user_string(context.resolve_value(raw, as_type=str))


def _secret(context: dg.ResolutionContext, raw: str | None) -> str | dg.EnvVar | None:
    """``{{ env.NAME }}`` becomes ``dg.EnvVar("NAME")``, read when a run starts, so the
    key never lands in the resource's config; any other value is resolved as usual."""
    if raw is None:
        return None
    match = _ENV_TEMPLATE.match(raw)
    if match:
        return dg.EnvVar(match.group(1) or match.group(2))
    return context.resolve_value(raw, as_type=str)


class MessageModel(dg.Model):
    """One chat message of ``messages``: a role and a Jinja template over ``row``."""

    role: Literal["system", "user", "assistant", "developer"] = "user"
    content: str


class ResourceModel(dg.Resolvable, dg.Model):
    """The inline ``InferenceBatchResource`` the component binds under ``resource_key``.

    Example:
        >>> ResourceModel(provider="openai").provider
        'openai'
    """

    model_config = ConfigDict(
        extra="forbid", arbitrary_types_allowed=True, hide_input_in_errors=True
    )

    api_key: Annotated[
        str | dg.EnvVar | None,
        dg.Resolver(
            _secret,
            model_field_type=str | None,
            inject_before_resolve=False,
            description="The key; write '{{ env.INFERENCE_API_KEY }}' (read when a run "
            "starts). Unset: the INFERENCE_API_KEY environment variable.",
        ),
    ] = None
    base_url: Annotated[str | None, _doc("Batch API base URL.")] = None
    provider: Annotated[
        str | None, _doc("Provider profile: inference.net (default), openai or compatible.")
    ] = None
    use_local_server: Annotated[
        bool, _doc("Development only: the package's local server (synthetic answers).")
    ] = False
    local_server_without_key: Annotated[
        bool,
        _doc(
            "Development: the local server (synthetic answers) only while neither a key "
            "nor a base URL is set; a key or URL always wins."
        ),
    ] = False

    def build(self) -> InferenceBatchResource:
        """The resource these settings describe.

        Example:
            >>> ResourceModel(use_local_server=True).build().provider_label
            'local (synthetic answers)'
        """
        settings = {
            "api_key": self.api_key,
            "base_url": self.base_url,
            "provider": self.provider,
            "use_local_server": self.use_local_server,
            "local_server_without_key": self.local_server_without_key,
        }
        return InferenceBatchResource(**{k: v for k, v in settings.items() if v is not None})


class ScheduleModel(dg.Resolvable, dg.Model):
    """``schedule:`` as an object: the cron string and its options (``ScheduleOptions``)."""

    cron: str
    timezone: str | None = None
    default_status: Literal["stopped", "running"] = "stopped"
    partition_keys: list[str] | None = None


class OnTimeModel(dg.Resolvable, dg.Model):
    """``on_time:`` thresholds of ``<name>_batch_on_time`` (``OnTimeOptions``)."""

    warn_fraction: float = Field(default=0.75, gt=0, le=1)
    error_margin_seconds: float = Field(default=3600.0, ge=0)
    completion_window_seconds: float = Field(default=24 * 3600.0, gt=0)


@dg.scaffold_with(InferenceBatchScaffolder)
class InferenceBatchComponent(dg.Component, dg.Model, dg.Resolvable):
    """Runs an upstream DataFrame's rows through an LLM Batch API, declared in YAML.

    It calls ``build_inference_batch_assets`` with its fields, so it defines the same
    ``<name>_input_file``, ``<name>_batch`` and ``<name>_results`` assets, the results'
    checks, ``<name>_sensor`` and the ``<name>_submit``/``_collect``/``_cancel`` jobs,
    plus the inline ``resource`` when one is given. The prompt is exactly one of
    ``prompt_column``, ``prompt_template`` and ``messages``.

    Example:
        >>> component = InferenceBatchComponent(
        ...     name="insights", upstream=dg.AssetKey("reviews"), id_column="review_id",
        ...     prompt_template="Review: {{ row.text }}", llm_model="m",
        ...     resource=ResourceModel(use_local_server=True))
        >>> pipeline = component.build_pipeline()
        >>> [a.key.to_user_string() for a in pipeline.assets]
        ['insights_input_file', 'insights_batch', 'insights_results']
        >>> pipeline.spec.requests.messages({"text": "Great!"})
        [{'role': 'user', 'content': 'Review: Great!'}]
        >>> scheduled = component.model_copy(update={"schedule": "0 6 * * *"})
        >>> scheduled.build_pipeline().schedule.name
        'insights_schedule'
    """

    model_config = ConfigDict(
        extra="forbid", arbitrary_types_allowed=True, hide_input_in_errors=True
    )

    name: Annotated[str, _doc("The pipeline's name, the prefix of its assets and jobs.")]
    upstream: Annotated[
        dg.AssetKey,
        dg.Resolver(
            _upstream_key,
            model_field_type=str,
            description="Key of the asset holding a pandas DataFrame, e.g. 'raw/reviews'.",
        ),
    ]
    id_column: Annotated[str, _doc("Column of each row's custom_id.")] = "custom_id"
    endpoint: Annotated[str, _doc("The Batch API endpoint.")] = CHAT_ENDPOINT
    # `model` in YAML; named otherwise here since Resolvable.model() is the YAML schema
    llm_model: Annotated[
        str | None,
        dg.Resolver(
            _resolved,
            model_field_name="model",
            model_field_type=str | None,
            description="Model set in every request body.",
        ),
    ] = None
    prompt_column: Annotated[str | None, _doc("Column of each row's prompt.")] = None
    prompt_template: Annotated[
        str | None,
        dg.Resolver(
            _template,
            model_field_type=str | None,
            inject_before_resolve=False,
            description="Jinja template of the user message over `row`, e.g. "
            "'Product: {{ row.product }}'; rendered per row.",
        ),
    ] = None
    messages: Annotated[
        list[MessageModel] | None,
        dg.Resolver.passthrough(
            description="Chat messages, each {role, content} with content a Jinja "
            "template over `row`; rendered per row."
        ),
    ] = None
    system_prompt: Annotated[str | None, _doc("System message put before each prompt.")] = None
    body_params: Annotated[
        dict[str, Any] | None, _doc("Further body fields for every request (max_tokens, ...).")
    ] = None
    response_format: Annotated[
        dict[str, Any] | str | None,
        _doc(
            "Structured output: a response_format object or a bare JSON schema, "
            "inline or as a .json file path relative to this defs.yaml."
        ),
    ] = None
    parse_content: Annotated[
        Literal["json"] | None, _doc("'json': each answer's JSON keys become result columns.")
    ] = None
    response_model: Annotated[
        dict[str, Any] | str | None,
        _doc(
            "Structured output, validated, as typed columns: a Pydantic model by its dotted "
            "path ('my_pkg.models.Insight' or 'my_pkg.models:Insight'), or a JSON schema, "
            "inline or as a .json file path relative to this defs.yaml. Not with "
            "response_format or parse_content."
        ),
    ] = None
    retry_invalid_output: Annotated[
        bool, _doc("Resubmit the answers that do not validate, within max_attempts.")
    ] = False
    retry_prompt_suffix: Annotated[
        str | None, _doc("Added to a retried row's prompt (null: resent as it was).")
    ] = DEFAULT_RETRY_PROMPT_SUFFIX
    max_invalid_output_rate: Annotated[
        float, _doc("Share of invalid answers above which the valid-output check warns.")
    ] = Field(default=0.02, ge=0, le=1)
    partitions_def: Annotated[
        dg.PartitionsDefinition | None,
        dg.Resolver(
            resolve_partitions_def,
            model_field_type=HourlyPartitionsDefinitionModel
            | DailyPartitionsDefinitionModel
            | WeeklyPartitionsDefinitionModel
            | TimeWindowPartitionsDefinitionModel
            | StaticPartitionsDefinitionModel
            | None,
            description="Partitions, as Dagster's components write them: "
            "{type: daily, start_date: ...} or {type: static, partition_keys: [...]}.",
        ),
    ] = None
    max_attempts: Annotated[int, _doc("Attempts per request.")] = Field(default=2, ge=1)
    max_failure_rate: Annotated[float, _doc("Share of failed rows the check allows.")] = Field(
        default=0.05, ge=0, le=1
    )
    results_wait_seconds: Annotated[
        float, _doc("How long the results step waits for the batches.")
    ] = Field(default=30.0, ge=0)
    sensor_interval_seconds: Annotated[int, _doc("Minimum seconds between sensor ticks.")] = Field(
        default=30, ge=1
    )
    group_name: Annotated[str | None, _doc("Asset group of the assets.")] = None
    key_prefix: Annotated[
        str | list[str] | None,
        _doc("Put before the three asset keys; the jobs' and sensor's names take it too."),
    ] = None
    owners: Annotated[list[str] | None, _doc("Owners of the three assets ('team:ml').")] = None
    tags: Annotated[dict[str, str] | None, _doc("Tags of the three assets.")] = None
    asset_spec_overrides: Annotated[
        dict[str, dict[str, Any]] | None,
        _doc(
            "Per asset (input_file, batch, results): description, owners, tags, metadata, "
            "group_name or code_version."
        ),
    ] = None
    max_cost_usd: Annotated[
        float | None, _doc("Refuse a job whose worst-case cost is above it.")
    ] = Field(default=None, ge=0)
    incremental: Annotated[bool, _doc("Send only rows with no stored answer.")] = True
    results_format: Annotated[
        Literal["dataframe", "parquet_dataset"],
        _doc(
            "dataframe: the results are one pandas DataFrame; parquet_dataset: the join "
            "streams into a Parquet dataset and the value is its ResultsDataset handle."
        ),
    ] = "dataframe"
    results_location: Annotated[
        str | None,
        _doc(
            "Where parquet_dataset results go: a local path or an fsspec URL "
            "(s3://bucket/prefix); default: the instance's storage directory."
        ),
    ] = None
    schedule: Annotated[
        str | ScheduleModel | None,
        _doc(
            "Submit on a cron schedule ('0 6 * * *'), or {cron, timezone, default_status, "
            "partition_keys}; stopped by default. Daily partitions: the day that just closed."
        ),
    ] = None
    on_time: Annotated[
        bool | OnTimeModel,
        _doc(
            "The <name>_batch_on_time check: true (default), false, or {warn_fraction, "
            "error_margin_seconds, completion_window_seconds}."
        ),
    ] = True
    results_freshness: Annotated[
        bool, _doc("With a schedule, a freshness policy on the results.")
    ] = True
    allow_empty: Annotated[
        bool | None,
        _doc("An upstream with no rows gives empty results (default: when partitioned)."),
    ] = None
    resource_key: Annotated[str, _doc("Key of the InferenceBatchResource.")] = "inference_batch"
    resource: Annotated[
        ResourceModel | None,
        _doc(
            "An inline InferenceBatchResource bound under resource_key; leave "
            "unset to use one defined elsewhere."
        ),
    ] = None

    @model_validator(mode="after")
    def _one_prompt(self) -> InferenceBatchComponent:
        given = [f for f in _PROMPT_FIELDS if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of {', '.join(_PROMPT_FIELDS)}"
                + (f" (got {' and '.join(given)})" if given else "")
            )
        if self.messages is not None and not self.messages:
            raise ValueError("messages: give at least one message")
        if self.response_model is not None:
            for other in ("response_format", "parse_content"):
                if getattr(self, other) is not None:
                    raise ValueError(f"give response_model or {other}, not both")
        return self

    @classmethod
    def resolve_from_model(
        cls, context: dg.ResolutionContext, model: BaseModel
    ) -> InferenceBatchComponent:
        """The component from its YAML; a value pydantic refuses is reported at its line
        in the ``defs.yaml``, naming the field."""
        try:
            return super().resolve_from_model(context, model)
        except ValidationError as error:
            first = error.errors()[0]["loc"] if error.errors() else ()
            if first:
                field = _YAML_NAMES.get(str(first[0]), str(first[0]))
            else:  # the prompt check: point at the last prompt option given
                given = [f for f in _PROMPT_FIELDS if getattr(model, f, None) is not None]
                field = given[-1] if given else None
            where = context.at_path(field) if field else context
            raise where.build_resolve_fn_exc(
                traceback.format_exception_only(error),
                field_name=field or "attributes",
                model=model,
            ) from None

    def build_pipeline(self, defs_dir: Path | None = None) -> InferenceBatchDefinitions:
        """The factory's definitions for these settings.

        Args:
            defs_dir: The folder of the ``defs.yaml``; a ``response_format`` path is
                relative to it (default: the working directory).

        Returns:
            What ``build_inference_batch_assets`` returns for the same arguments.

        Raises:
            ValueError: ``response_format`` both here and in ``body_params``, a file
                that is missing or not JSON, or a ``response_model`` that cannot be
                imported.
        """
        return build_inference_batch_assets(
            self.name,
            upstream=self.upstream,
            id_column=self.id_column,
            endpoint=self.endpoint,
            model=self.llm_model,
            **self._prompt(),
            body_params=self._body_params(defs_dir or Path.cwd()),
            parse_content=json.loads if self.parse_content == "json" else None,
            response_model=_response_model(self.response_model, defs_dir or Path.cwd()),
            retry_invalid_output=self.retry_invalid_output,
            retry_prompt_suffix=self.retry_prompt_suffix,
            max_invalid_output_rate=self.max_invalid_output_rate,
            partitions_def=self.partitions_def,
            resource_key=self.resource_key,
            max_attempts=self.max_attempts,
            max_failure_rate=self.max_failure_rate,
            results_wait_seconds=self.results_wait_seconds,
            sensor_interval_seconds=self.sensor_interval_seconds,
            incremental=self.incremental,
            max_cost_usd=self.max_cost_usd,
            results_format=self.results_format,
            results_location=self.results_location,
            allow_empty=self.allow_empty,
            group_name=self.group_name,
            key_prefix=self.key_prefix,
            owners=self.owners,
            tags=self.tags,
            asset_spec_overrides=self.asset_spec_overrides,
            schedule=self._schedule(),
            on_time=(
                OnTimeOptions(**self.on_time.model_dump())
                if isinstance(self.on_time, OnTimeModel)
                else self.on_time
            ),
            results_freshness=self.results_freshness,
        )

    def _schedule(self) -> str | ScheduleOptions | None:
        """The factory's ``schedule``: a cron string as given, an object as options."""
        if isinstance(self.schedule, ScheduleModel):
            return ScheduleOptions(**self.schedule.model_dump())
        return self.schedule

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        """The pipeline's definitions, with the inline ``resource`` if there is one."""
        try:
            pipeline = self.build_pipeline(context.path)
        except ValueError as error:
            raise ValueError(f"{context.path / 'defs.yaml'}: {error}") from None
        if self.resource is None:
            return pipeline.defs
        resources = dg.Definitions(resources={self.resource_key: self.resource.build()})
        return dg.Definitions.merge(pipeline.defs, resources)

    def _prompt(self) -> dict[str, Any]:
        """The factory's prompt arguments: a column, or a messages callable."""
        if self.prompt_column is not None:
            return {"prompt_column": self.prompt_column, "system_prompt": self.system_prompt}
        system = [("system", self.system_prompt)] if self.system_prompt is not None else []
        if self.prompt_template is not None:
            return {"messages": MessageTemplates([*system, ("user", self.prompt_template)])}
        turns = [(m.role, m.content) for m in self.messages or []]
        return {"messages": MessageTemplates([*system, *turns])}

    def _body_params(self, defs_dir: Path) -> dict[str, Any] | None:
        """``body_params`` with ``response_format`` merged in."""
        params = dict(self.body_params or {})
        if self.response_format is None:
            return params or None
        if "response_format" in params:
            raise ValueError("give response_format once: as a field or in body_params, not both")
        params["response_format"] = _response_format(self.response_format, self.name, defs_dir)
        return params


def _response_model(value: dict[str, Any] | str | None, defs_dir: Path) -> Any:
    """The ``response_model`` field as the factory takes it: a schema dict as is, a
    ``.json`` path read (relative to the ``defs.yaml``), a dotted path imported.

    Example:
        >>> _response_model("pydantic:BaseModel", Path("."))
        <class 'pydantic.main.BaseModel'>
    """
    if value is None or isinstance(value, dict):
        return value
    if value.endswith(".json"):
        return _json_file(defs_dir / value, "response_model")
    module_name, _, attribute = value.rpartition(":") if ":" in value else value.rpartition(".")
    if not module_name:
        raise ValueError(f"response_model: {value!r} is not a dotted path to a model")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"response_model: cannot import {value!r} ({error})") from None


def _json_file(path: Path, field: str) -> dict[str, Any]:
    """The JSON object in ``path``; a ValueError naming ``field`` otherwise."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{field}: no file {path}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{field}: {path} is not JSON ({error})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{field}: {path} holds no JSON object")
    return value


def _response_format(value: dict[str, Any] | str, name: str, defs_dir: Path) -> dict[str, Any]:
    """A ``response_format`` object from an inline value or a ``.json`` file; a bare JSON
    schema is wrapped as a strict ``json_schema`` format named after the pipeline.

    Example:
        >>> _response_format({"type": "object"}, "insights", Path("."))["json_schema"]["name"]
        'insights'
    """
    if isinstance(value, str):
        value = _json_file(defs_dir / value, "response_format")
    if value.get("type") in _RESPONSE_FORMAT_TYPES:
        return value
    return {"type": "json_schema", "json_schema": {"name": name, "strict": True, "schema": value}}
