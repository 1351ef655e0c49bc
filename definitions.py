"""Demo code location: product reviews turned into structured insights by a Batch API.

``reviews`` (package data) -> ``review_insights_*`` (input file, batch, results: one
row per review with sentiment, topics and a one-line summary, typed columns from the
``ReviewInsight`` model) -> the per-product ``review_sentiment_summary``. Launch ``review_insights_daily`` (or materialize
everything) in the UI; the sensor collects the results when the batch is done and the
summary follows by itself.

With ``INFERENCE_API_KEY`` set the requests go to Inference.net (or to
``INFERENCE_BASE_URL``); without either the demo runs on the package's local Batch API
server (it opts in with ``local_server_without_key=True``), whose answers are synthetic
and say so in metadata.
"""

import os
from collections import Counter
from importlib.resources import files
from typing import Any, Literal

import dagster as dg
import pandas as pd
from pydantic import BaseModel, Field

from dagster_inference_batch import InferenceBatchResource, build_inference_batch_assets

MODEL = os.environ.get("REVIEW_INSIGHTS_MODEL", "meta-llama/llama-3.1-8b-instruct/fp-8")
SENSOR_INTERVAL_SECONDS = int(os.environ.get("REVIEW_INSIGHTS_SENSOR_INTERVAL", "30"))
SENTIMENTS = ["positive", "neutral", "negative"]


class ReviewInsight(BaseModel):
    """What the model answers for one review; its fields become typed result columns."""

    sentiment: Literal["positive", "neutral", "negative"]
    topics: list[str] = Field(max_length=4, description="up to four short topics")
    summary: str = Field(description="one line, at most 15 words")


SYSTEM_PROMPT = (
    "You read one customer review of a product and answer in JSON: the reviewer's "
    "sentiment, up to four short topics the review is about (e.g. 'battery life', "
    "'fit'), and a one-line summary of at most 15 words."
)


@dg.asset(kinds={"pandas"}, group_name="reviews")
def reviews() -> dg.Output[pd.DataFrame]:
    """Product reviews written for this demo (review_id, product, rating, text)."""
    source = files("dagster_inference_batch") / "data" / "reviews.csv"
    with source.open("r", encoding="utf-8") as handle:
        frame = pd.read_csv(handle, dtype={"review_id": str})
    return dg.Output(frame, metadata={"dagster/row_count": len(frame)})


def review_messages(row: dict[str, Any]) -> list[dict[str, str]]:
    """The chat messages asking for one review's insight."""
    review = f"Product: {row['product']}\nRating: {row['rating']} of 5\nReview: {row['text']}"
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": review}]


review_insights = build_inference_batch_assets(
    "review_insights",
    upstream=reviews,
    id_column="review_id",
    messages=review_messages,
    model=MODEL,
    body_params={"max_tokens": 200, "temperature": 0},
    response_model=ReviewInsight,
    sensor_interval_seconds=SENSOR_INTERVAL_SECONDS,
    group_name="reviews",
    schedule="0 6 * * *",  # review_insights_schedule: submits at 06:00 once switched on
)


@dg.asset(
    kinds={"pandas"},
    group_name="reviews",
    automation_condition=dg.AutomationCondition.eager()
    & dg.AutomationCondition.all_deps_blocking_checks_passed(),
)
def review_sentiment_summary(review_insights_results: pd.DataFrame) -> dg.Output[pd.DataFrame]:
    """Per product: reviews, average rating, sentiment counts and the most named topics."""
    answered = review_insights_results[review_insights_results["status"] == "succeeded"]
    rows = []
    for product, group in answered.groupby("product", sort=True):
        sentiments = group["sentiment"].value_counts()  # a categorical: every sentiment
        topics = Counter(group["topics"].explode().dropna())  # lists of strings (Arrow)
        rows.append(
            {
                "product": product,
                "reviews": len(group),
                "average_rating": round(float(group["rating"].mean()), 2),
                **{s: int(sentiments.get(s, 0)) for s in SENTIMENTS},
                "top_topics": ", ".join(t for t, _ in topics.most_common(3)),
            }
        )
    summary = pd.DataFrame(rows)
    return dg.Output(
        summary,
        metadata={
            "dagster/row_count": len(summary),
            "reviews_answered": len(answered),
            "preview": dg.MetadataValue.table(
                [dg.TableRecord(r) for r in summary.to_dict("records")]
            ),
        },
    )


review_insights_daily = dg.define_asset_job(
    "review_insights_daily",
    selection=dg.AssetSelection.assets(
        reviews, review_insights.input_file_key, review_insights.batch_key
    ),
    description="Reload the reviews and submit them; the sensor collects the results.",
)

defs = dg.Definitions.merge(
    review_insights.defs,
    dg.Definitions(
        assets=[reviews, review_sentiment_summary],
        jobs=[review_insights_daily],
        sensors=[
            dg.AutomationConditionSensorDefinition(
                "review_insights_automation",
                target=[review_sentiment_summary],
                default_status=dg.DefaultSensorStatus.RUNNING,
                minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
            )
        ],
        resources={
            # INFERENCE_API_KEY (Inference.net) or INFERENCE_BASE_URL when set, else the
            # local server, whose answers are synthetic and say so in metadata
            "inference_batch": InferenceBatchResource(local_server_without_key=True)
        },
    ),
)
