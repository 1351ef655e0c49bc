"""Drive a pipeline in-process the way the daemon would: runs, sensor ticks, run keys.

`Harness` builds a pipeline over a small upstream asset (`prompts`), materializes it
with `dg.materialize`, evaluates the sensor with `dg.build_sensor_context`, records the
sensor's asset events on the instance and launches each new run request (once per
`run_key`, as the daemon does) by executing the `<name>_collect` job with the tags the
daemon gives it (`dagster/run_key`, `dagster/sensor_name` and the request's own).
"""

import time
from collections.abc import Callable
from typing import Any

import dagster as dg
import pandas as pd
from dagster._core.definitions.sensor_definition import SensorExecutionData

from dagster_inference_batch import InferenceBatchResource, build_inference_batch_assets
from dagster_inference_batch.event_ledger import LEDGER_KEY

NAME = "llm"
MODEL = "test-model"


def prompts_asset(
    rows: int, partitions_def: dg.PartitionsDefinition | None, *, distinct: bool = False
) -> dg.AssetsDefinition:
    """`prompts`: `rows` rows of (custom_id, prompt, n); ids carry the partition key.

    The prompts are the same in every partition (so a partition's answers are in the
    answer store once another's were collected), unless `distinct`: then they name the
    partition too, and each partition's requests are new to the store."""

    @dg.asset(name="prompts", partitions_def=partitions_def)
    def prompts(context: dg.AssetExecutionContext) -> pd.DataFrame:
        prefix = context.partition_key if context.has_partition_key else "row"
        suffix = f" in {prefix}" if distinct else ""
        return pd.DataFrame(
            {
                "custom_id": [f"{prefix}-{i}" for i in range(rows)],
                "prompt": [f"Say hello to number {i}{suffix}" for i in range(rows)],
                "n": range(rows),
            }
        )

    return prompts


class Harness:
    """One pipeline named `llm` over `prompts`, bound to a local server and an instance
    (or to `resource`, when given, instead of `base_url`), storing values with
    `io_manager` (default: the instance's local filesystem)."""

    def __init__(
        self,
        instance: dg.DagsterInstance,
        base_url: str,
        *,
        api_key: str = "test-key",
        rows: int = 10,
        partitions_def: dg.PartitionsDefinition | None = None,
        resource_options: dict[str, Any] | None = None,
        resource: InferenceBatchResource | None = None,
        io_manager: dg.ConfigurableIOManager | None = None,
        **factory_options: Any,
    ) -> None:
        self.instance = instance
        self.upstream = prompts_asset(rows, partitions_def)
        factory_options.setdefault("prompt_column", "prompt")
        factory_options.setdefault("model", MODEL)
        factory_options.setdefault("results_wait_seconds", 0)
        self.pipeline = build_inference_batch_assets(
            NAME, upstream=self.upstream, partitions_def=partitions_def, **factory_options
        )
        self.resources = {
            "inference_batch": resource
            or InferenceBatchResource(
                base_url=base_url, api_key=api_key, **(resource_options or {})
            ),
            **({"io_manager": io_manager} if io_manager else {}),
        }
        self.defs = dg.Definitions.merge(
            self.pipeline.defs, dg.Definitions(assets=[self.upstream], resources=self.resources)
        )
        self.cursor: str | None = None
        self.run_keys: list[str] = []
        self.collect_runs: list[dg.ExecuteInProcessResult] = []

    # ---------------------------------------------------------------- runs

    def materialize(
        self, *keys: dg.AssetKey, partition: str | None = None, raise_on_error: bool = True
    ) -> dg.ExecuteInProcessResult:
        """Materialize `prompts` and the given pipeline assets (with the results' checks
        when `<name>_results` is among them)."""
        checks = self.pipeline.asset_checks if self.pipeline.results_key in keys else []
        return dg.materialize(
            [self.upstream, *self.pipeline.assets, *checks],
            selection=dg.AssetSelection.assets(self.upstream.key, *keys),
            partition_key=partition,
            instance=self.instance,
            resources=self.resources,
            raise_on_error=raise_on_error,
        )

    def submit(self, partition: str | None = None) -> dg.ExecuteInProcessResult:
        return self.materialize(
            self.pipeline.input_file_key, self.pipeline.batch_key, partition=partition
        )

    def submit_without_raising(self, partition: str | None = None) -> dg.ExecuteInProcessResult:
        return self.materialize(
            self.pipeline.input_file_key,
            self.pipeline.batch_key,
            partition=partition,
            raise_on_error=False,
        )

    def run_job(
        self, name: str, partition: str | None = None, tags: dict[str, str] | None = None
    ) -> dg.ExecuteInProcessResult:
        return self.defs.resolve_job_def(name).execute_in_process(
            instance=self.instance, partition_key=partition, raise_on_error=False, tags=tags
        )

    # ------------------------------------------------------------- sensor

    def tick(self) -> SensorExecutionData:
        """Evaluate the sensor once and act on its result as the daemon would."""
        context = dg.build_sensor_context(
            instance=self.instance,
            cursor=self.cursor,
            resources=self.resources,
            definitions=self.defs,
        )
        with dg.partition_loading_context(dynamic_partitions_store=self.instance):
            result = self.pipeline.sensor.evaluate_tick(context)
        self.cursor = result.cursor
        for event in result.asset_events:
            self.instance.report_runless_asset_event(event)
        for request in result.run_requests or []:
            if request.run_key in self.run_keys:
                continue
            self.run_keys.append(request.run_key)
            tags = {
                **request.tags,
                "dagster/run_key": request.run_key,
                "dagster/sensor_name": self.pipeline.sensor.name,
            }
            self.collect_runs.append(
                self.run_job(f"{NAME}_collect", request.partition_key, tags=tags)
            )
        return result

    def tick_until(
        self, done: Callable[[], bool], *, timeout: float = 60.0, pause: float = 0.2
    ) -> list[SensorExecutionData]:
        """Tick until `done()`; returns every tick's result."""
        results = []
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"not done after {timeout}s: {results[-3:]}"
            results.append(self.tick())
            time.sleep(pause)
        return results

    # ----------------------------------------------------------- event log

    def materializations(
        self, key: dg.AssetKey, partition: str | None = None
    ) -> list[dg.AssetMaterialization]:
        records_filter = dg.AssetRecordsFilter(
            asset_key=key, asset_partitions=[partition] if partition else None
        )
        records = self.instance.fetch_materializations(records_filter, limit=1000).records
        return [r.asset_materialization for r in reversed(records)]

    def observations(
        self, key: dg.AssetKey, partition: str | None = None
    ) -> list[dg.AssetObservation]:
        """Observations other than the ledger's, oldest first (`ledger_entries` has
        those)."""
        return [o for o in self._observations(key, partition) if LEDGER_KEY not in o.metadata]

    def ledger_entries(
        self, key: dg.AssetKey, partition: str | None = None
    ) -> list[dict[str, str]]:
        """The ledger's records on `key` (uploads on `<name>_input_file`, batches on
        `<name>_batch`), oldest first."""
        observations = self._observations(key, partition)
        return [o.metadata[LEDGER_KEY].value for o in observations if LEDGER_KEY in o.metadata]

    def _observations(self, key: dg.AssetKey, partition: str | None) -> list[dg.AssetObservation]:
        records_filter = dg.AssetRecordsFilter(
            asset_key=key, asset_partitions=[partition] if partition else None
        )
        records = self.instance.fetch_observations(records_filter, limit=1000).records
        return [r.asset_observation for r in reversed(records)]

    def results_done(self, partition: str | None = None) -> bool:
        return bool(self.materializations(self.pipeline.results_key, partition))

    def results_frame(self, partition: str | None = None) -> pd.DataFrame:
        """The latest results as stored by the IO manager."""
        return self.defs.load_asset_value(
            self.pipeline.results_key, instance=self.instance, partition_key=partition
        )
