"""The pipeline's source asset: product reviews as a pandas DataFrame."""

from importlib.resources import files

import dagster as dg
import pandas as pd


@dg.asset(kinds={"pandas"}, group_name="reviews")
def reviews() -> dg.Output[pd.DataFrame]:
    """Product reviews (review_id, product, rating, text) shipped with dagster-inference-batch."""
    source = files("dagster_inference_batch") / "data" / "reviews.csv"
    with source.open("r", encoding="utf-8") as handle:
        frame = pd.read_csv(handle, dtype={"review_id": str})
    return dg.Output(frame, metadata={"dagster/row_count": len(frame)})
