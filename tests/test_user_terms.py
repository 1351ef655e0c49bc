"""A newcomer's pipeline in Dagster (issue 17): bad rows fail in the user's terms, the fix
first; an empty partition is a quiet day, not a failure."""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg
import pandas as pd
import pytest

from dagster_inference_batch import InferenceBatchResource, build_inference_batch_assets

DAYS = dg.StaticPartitionsDefinition(["2026-11-01", "2026-11-02"])
TICKETS = {
    "2026-11-01": pd.DataFrame(
        {"ticket_id": ["t1", "t2", "t2"], "text": ["late", "charged twice", "again"]},
        index=[10, 11, 12],
    ),
    "2026-11-02": pd.DataFrame({"ticket_id": pd.Series([], dtype=str), "text": []}),
}


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


def tickets_asset(partitions_def: dg.PartitionsDefinition | None) -> dg.AssetsDefinition:
    @dg.asset(name="tickets", partitions_def=partitions_def)
    def tickets(context) -> pd.DataFrame:  # unannotated: this module's annotations are strings
        return TICKETS[context.partition_key if context.has_partition_key else "2026-11-02"]

    return tickets


def run_everything(
    instance: dg.DagsterInstance,
    base_url: str,
    partitions_def: dg.PartitionsDefinition | None,
    partition: str | None,
) -> dg.ExecuteInProcessResult:
    tickets = tickets_asset(partitions_def)
    triage = build_inference_batch_assets(
        "triage",
        upstream=tickets,
        partitions_def=partitions_def,
        id_column="ticket_id",
        prompt_column="text",
        model="test-model",
    )
    return dg.materialize(
        [tickets, *triage.assets, *triage.asset_checks],
        partition_key=partition,
        instance=instance,
        resources={"inference_batch": InferenceBatchResource(api_key="k", base_url=base_url)},
        raise_on_error=False,
    )


def failure_of(result: dg.ExecuteInProcessResult) -> tuple[str, dict]:
    """The failed step's message (after the exception's class name) and metadata."""
    failure = next(e for e in result.all_events if e.is_step_failure)
    data = failure.step_failure_data
    metadata = data.user_failure_data.metadata if data.user_failure_data else {}
    kind, message = data.error.message.split(": ", 1)
    assert kind.endswith("Failure")
    return message, {k: v.value for k, v in metadata.items()}


def test_duplicate_ids_fail_the_input_file_step_naming_the_column_and_row_fix_first(
    instance, shared_batch_server
):
    result = run_everything(instance, shared_batch_server.base_url, DAYS, "2026-11-01")
    assert not result.success
    message, metadata = failure_of(result)
    fix = "Fix these rows of tickets, then materialize triage_submit again."
    problem = (
        "row index 12 (ticket_id 't2', custom_id 't2'): duplicate ticket_id (first at row index 11)"
    )
    assert message.startswith(fix)
    assert problem in message
    assert metadata["inference_batch/fix"] == fix
    assert metadata["inference_batch/problems"] == [problem]


def test_an_empty_partition_materializes_empty_results_with_a_note_and_no_batch(
    instance, shared_batch_server
):
    result = run_everything(instance, shared_batch_server.base_url, DAYS, "2026-11-02")
    assert result.success
    (batch,) = result.asset_materializations_for_node("triage_batch")
    assert batch.metadata["inference_batch/batch_ids"].value == []
    (results,) = result.asset_materializations_for_node("triage_results")
    assert "no batch created" in results.metadata["inference_batch/note"].value
    frame = result.output_for_node("triage_results")
    assert len(frame) == 0 and {"ticket_id", "status", "content"} <= set(frame.columns)
    assert all(check.passed for check in result.get_asset_check_evaluations())


def test_an_empty_unpartitioned_upstream_fails_saying_how_to_allow_it(
    instance, shared_batch_server
):
    result = run_everything(instance, shared_batch_server.base_url, None, None)
    assert not result.success
    message, metadata = failure_of(result)
    assert message.startswith("tickets has no rows. Pass allow_empty=True")
    assert "allow_empty=True" in metadata["inference_batch/fix"]
