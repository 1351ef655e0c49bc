"""The demo end to end: a real `dagster dev` (webserver + daemon) driven through GraphQL.

Starts `dagster dev` on the repository's `workspace.yaml` with a temporary
`DAGSTER_HOME`, pointed at a local Batch API server through `INFERENCE_BASE_URL`,
launches `review_insights_daily`, and waits until the daemon's sensor has collected
`review_insights_results` and the automation sensor has built `review_sentiment_summary`.
The server expires the first attempt part-way, so the sensor's resubmission is part of
the story.
The browser test then opens the results page in headless Chromium.
"""

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dagster_graphql import DagsterGraphQLClient

from tests.dagster_dev import REPO, DagsterDev, start_dagster_dev, stop_group, wait_for

CHROMIUM = Path("/usr/bin/chromium")
# the README's screenshot; refreshed only when asked, so a test run leaves the tree clean
README_SCREENSHOT = REPO / "docs" / "screenshot-results.png"
SUMMARY_SCREENSHOT = REPO / "docs" / "images" / "results-summary.png"
UPDATE_SCREENSHOT = os.environ.get("UPDATE_README_SCREENSHOT") == "1"
REVIEWS = 60
EXPIRE_AFTER = 40  # requests the local server answers in a batch before it expires
PRODUCTS = 6
CHECK_NAMES = (
    "review_insights_results_complete",
    "review_insights_results_failure_rate",
    "review_insights_results_valid_output",
)

CHECKS = """
query Checks($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    ... on AssetNode {
      assetChecksOrError {
        ... on AssetChecks {
          checks { name executionForLatestMaterialization { status evaluation { success } } }
        }
      }
    }
  }
}
"""
HISTORY = """
query History($key: AssetKeyInput!) {
  assetOrError(assetKey: $key) {
    ... on Asset {
      assetMaterializations(limit: 20) {
        metadataEntries { label ... on IntMetadataEntry { intValue } }
      }
      assetObservations(limit: 200) {
        metadataEntries {
          label
          ... on TextMetadataEntry { text }
          ... on IntMetadataEntry { intValue }
        }
      }
    }
  }
}
"""
RUN_TAGS = """
query Run($runId: ID!) { runOrError(runId: $runId) { ... on Run { tags { key value } } } }
"""


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterDev]:
    """`dagster dev` after `review_insights_daily` ran and the sensors finished the rest."""
    from dagster_inference_batch.local_server import LocalBatchServer

    server = LocalBatchServer(
        tmp_path_factory.mktemp("e2e-server"),
        validating_seconds=0.2,
        finalizing_seconds=0.2,
        # each batch expires once 40 of its requests are answered: the first attempt
        # after 40 of the 60 reviews (8 s, so sensor ticks every 2 s see it part-done
        # even on a loaded machine), the resubmitted 20 all finish
        requests_per_second=5,
        expire_after_requests=EXPIRE_AFTER,
    )
    home = tmp_path_factory.mktemp("dagster-home")
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {k: v for k, v in os.environ.items() if k != "INFERENCE_API_KEY"}
    env.update(REVIEW_INSIGHTS_SENSOR_INTERVAL="2")
    with server:
        env["INFERENCE_BASE_URL"] = server.base_url
        process, dev = start_dagster_dev(home, env)
        try:
            client = DagsterGraphQLClient("127.0.0.1", port_number=dev.port)
            client.submit_job_execution("review_insights_daily")
            wait_for(
                lambda: dev.latest("review_sentiment_summary") is not None,
                "review_sentiment_summary",
                process,
                home,
            )
            yield dev
        finally:
            stop_group(process)


def entries(event: dict[str, Any]) -> dict[str, Any]:
    return {e["label"]: e.get("intValue", e.get("text")) for e in event["metadataEntries"]}


def test_expired_batch_is_resubmitted_once_and_every_review_succeeds(demo: DagsterDev) -> None:
    history = demo.graphql(HISTORY, key={"path": ["review_insights_batch"]})["assetOrError"]
    attempts = [entries(m)["inference_batch/attempt"] for m in history["assetMaterializations"]]
    assert sorted(attempts) == [1, 2]  # the run's, then the sensor's resubmission
    # progress observations (the ledger's upload and create records are observations too)
    observed = [entries(o) for o in history["assetObservations"]]
    progress = [o for o in observed if "inference_batch/status" in o]
    statuses = [o["inference_batch/status"] for o in progress]
    assert "expired" in statuses and "completed" in statuses
    results = demo.latest("review_insights_results")
    assert results is not None
    assert results["metadata"]["inference_batch/attempts"] == 2
    assert results["metadata"]["inference_batch/succeeded"] == REVIEWS
    expired = [o for o in progress if o["inference_batch/status"] == "expired"]
    assert expired and all(o["inference_batch/completed"] == EXPIRE_AFTER for o in expired)
    # while in flight with requests done, an observation has the pace and the ETA
    paced = [o for o in progress if "inference_batch/eta" in o]
    assert paced and all("inference_batch/requests_per_minute" in o for o in paced)


def test_sensor_collects_results_and_the_summary_follows(demo: DagsterDev) -> None:
    results = demo.latest("review_insights_results")
    assert results is not None
    metadata = results["metadata"]
    assert metadata["dagster/row_count"] == REVIEWS
    assert metadata["inference_batch/succeeded"] == REVIEWS
    assert metadata["inference_batch/failed"] == 0
    assert metadata["inference_batch/output_tokens"] > 0
    assert metadata["inference_batch/seconds_to_final"] >= 0

    tags = demo.graphql(RUN_TAGS, runId=results["run_id"])["runOrError"]["tags"]
    assert {"key": "dagster/sensor_name", "value": "review_insights_sensor"} in tags

    checks = demo.graphql(CHECKS, key={"path": ["review_insights_results"]})
    found = checks["assetNodeOrError"]["assetChecksOrError"]["checks"]
    outcomes = {
        c["name"]: (
            c["executionForLatestMaterialization"]["status"],
            c["executionForLatestMaterialization"]["evaluation"]["success"],
        )
        for c in found
    }
    assert outcomes == {name: ("SUCCEEDED", True) for name in CHECK_NAMES}

    summary = demo.latest("review_sentiment_summary")
    assert summary is not None
    assert summary["metadata"]["dagster/row_count"] == PRODUCTS
    assert summary["metadata"]["reviews_answered"] == REVIEWS


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_results_page_shows_row_count_and_checks(demo: DagsterDev, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch_persistent_context(
                profile,
                executable_path=str(CHROMIUM),
                headless=True,
                viewport={"width": 1440, "height": 1000},
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                ],
            )
            page = browser.new_page()
            # the web UI's first-visit newsletter prompt may pop up at any moment: skip it
            skip = page.get_by_role("button", name="Skip")
            page.add_locator_handler(skip, lambda: skip.click())
            page.goto(f"{demo.url}/assets/review_insights_results")
            page.get_by_text("Row count").wait_for(timeout=60_000)
            status = page.get_by_text("Row count").locator("xpath=..")
            assert str(REVIEWS) in status.inner_text()
            page.get_by_text("Latest check results").hover()  # lets the prompt handler run
            screenshot = README_SCREENSHOT if UPDATE_SCREENSHOT else tmp_path / "results.png"
            page.screenshot(path=str(screenshot))
            assert screenshot.stat().st_size > 10_000

            page.goto(f"{demo.url}/assets/review_insights_results?view=checks")
            page.get_by_text(f"Checks ({len(CHECK_NAMES)})").wait_for(timeout=60_000)
            for check in CHECK_NAMES:  # the list cuts long names short: filter, then open
                page.get_by_placeholder("Filter checks").fill(check.rsplit("_", 1)[-1])
                page.get_by_text("Succeeded").first.click()
                page.get_by_text(check, exact=True).last.wait_for()
                result = page.get_by_text("Evaluation result").locator("xpath=..")
                assert "Passed" in result.inner_text()

            # the results' markdown summary, rendered in place in the overview's metadata table;
            # a wide window so that its value column shows the summary's tables uncut
            page.set_viewport_size({"width": 2400, "height": 1400})
            page.goto(f"{demo.url}/assets/review_insights_results")
            row = page.locator("tr", has_text="inference_batch/summary").first
            row.get_by_text("Tokens and cost").wait_for(timeout=60_000)
            row.scroll_into_view_if_needed()
            summary = row.inner_text()
            assert f"{REVIEWS} rows" in summary and "Attempts: 2" in summary, summary
            shot = SUMMARY_SCREENSHOT if UPDATE_SCREENSHOT else tmp_path / "summary.png"
            row.screenshot(path=str(shot))
            assert shot.stat().st_size > 5_000

            # the batch's latest observation, first in its Events tab: the final status
            page.goto(f"{demo.url}/assets/review_insights_batch?view=events")
            latest = page.locator("tr", has_text="inference_batch/status").first
            latest.get_by_text("completed", exact=True).wait_for(timeout=60_000)
            assert page.get_by_text("Observed").first.is_visible()
            attempt = page.locator("tr", has_text="inference_batch/attempt").first
            assert attempt.inner_text().split()[-1] == "2"
            browser.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
