"""The one non-public Dagster call (``dagster_compat``): fails loudly when an upgrade changes it."""

from __future__ import annotations

import inspect

import dagster as dg
import pytest

from dagster_inference_batch import dagster_compat
from dagster_inference_batch.dagster_compat import (
    INTERNAL_METHOD,
    latest_storage_id_by_partition,
    latest_storage_id_by_partition_public,
)

KEY = dg.AssetKey("llm_batch")


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        for partition in ("a", "b", "a", "c", "b", "a"):
            instance.report_runless_asset_event(dg.AssetMaterialization(KEY, partition=partition))
        instance.report_runless_asset_event(dg.AssetObservation(KEY, partition="d"))
        yield instance


def test_the_internal_method_still_exists_with_the_tested_signature():
    """If this fails, Dagster removed or changed the method: the sensor still works through
    the public fallback, but reads every materialization each tick. Find the new public
    (or internal) route and update ``dagster_compat`` before supporting that version."""
    method = getattr(dg.DagsterInstance, INTERNAL_METHOD, None)
    assert method is not None, f"DagsterInstance.{INTERNAL_METHOD} is gone"
    parameters = list(inspect.signature(method).parameters)
    assert parameters[:3] == ["self", "asset_key", "event_type"], parameters


def test_the_internal_method_and_the_public_fallback_agree(instance):
    internal = getattr(instance, INTERNAL_METHOD)(KEY, dg.DagsterEventType.ASSET_MATERIALIZATION)
    public = latest_storage_id_by_partition_public(instance, KEY)
    assert dict(internal) == public == latest_storage_id_by_partition(instance, KEY)
    assert sorted(public) == ["a", "b", "c"]  # the observation of "d" is not a materialization
    assert public["a"] > public["b"] > public["c"]


def test_the_public_fallback_pages_through_the_history(instance, monkeypatch):
    monkeypatch.setattr(dagster_compat, "PAGE", 2)
    assert latest_storage_id_by_partition_public(instance, KEY) == dict(
        getattr(instance, INTERNAL_METHOD)(KEY, dg.DagsterEventType.ASSET_MATERIALIZATION)
    )


def test_without_the_internal_method_the_public_fallback_answers(instance, monkeypatch):
    expected = latest_storage_id_by_partition_public(instance, KEY)
    for owner in dg.DagsterInstance.__mro__:  # remove it where it is defined (a mixin)
        if INTERNAL_METHOD in vars(owner):
            monkeypatch.delattr(owner, INTERNAL_METHOD)
    assert not hasattr(instance, INTERNAL_METHOD)
    assert latest_storage_id_by_partition(instance, KEY) == expected


def test_a_changed_signature_falls_back_to_the_public_queries(instance, monkeypatch):
    expected = latest_storage_id_by_partition_public(instance, KEY)

    def changed(self, asset_key, *, event_type):  # e.g. a keyword-only event type
        raise AssertionError("not reached")

    monkeypatch.setattr(dg.DagsterInstance, INTERNAL_METHOD, changed)
    assert latest_storage_id_by_partition(instance, KEY) == expected
