"""Cost estimates from request lines, prices, and the budget guard (issue 11)."""

from __future__ import annotations

import math
import sys
import types
from collections.abc import Callable, Iterator
from importlib.resources import files
from typing import Any

import pandas as pd
import pytest

import definitions
from dagster_inference_batch import InferenceBatchClient
from dagster_inference_batch.cost_estimate import (
    DEFAULT_WORST_OUTPUT_TOKENS,
    MESSAGE_OVERHEAD_TOKENS,
    REPLY_OVERHEAD_TOKENS,
    TYPICAL_OUTPUT_TOKENS,
    BudgetExceeded,
    CostEstimate,
    Prices,
    _tiktoken_encoding,
    check_budget,
    estimate_cost,
    published_batch_prices,
    resolve_prices,
    usd,
)
from dagster_inference_batch.errors import InvalidBatchInput
from dagster_inference_batch.local_server import LocalBatchServer
from dagster_inference_batch.request_lines import build_requests

# Tolerance of the approximation against the local server's token counts (module docstring).
SERVER_TOLERANCE = 0.25


def approx(*texts: str) -> int:
    return sum(math.ceil(len(t) / 4) for t in texts)


def chat_overhead(messages: int) -> int:
    return MESSAGE_OVERHEAD_TOKENS * messages + REPLY_OVERHEAD_TOKENS


def bodies(endpoint: str, items: list[dict[str, Any]]) -> Any:
    frame = pd.DataFrame({"custom_id": [f"r{i}" for i in range(len(items))], "body": items})
    return build_requests(frame, endpoint=endpoint, body_column="body")


PROMPTS = ["Is this boot waterproof?", "Summarise: fits well, laces loosen on descents."]
SYSTEM = "Answer in one line."


def chat_prompts(**body_params: Any) -> Any:
    frame = pd.DataFrame({"custom_id": ["a", "b"], "prompt": PROMPTS})
    return build_requests(
        frame,
        model="gpt-4o-mini",
        prompt_column="prompt",
        system_prompt=SYSTEM,
        body_params=body_params,
    )


def test_chat_with_max_tokens_counts_each_text_and_message() -> None:
    est = estimate_cost(chat_prompts(max_tokens=100), None)
    expected = sum(approx(SYSTEM, p) + chat_overhead(2) for p in PROMPTS)
    assert (est.requests, est.input_tokens) == (2, expected)
    assert (est.typical_output_tokens, est.worst_output_tokens) == (200, 200)
    assert est.typical_usd is None and est.worst_usd is None
    assert "approximation: 4 characters per token" in est.method
    assert "assumed" not in est.method
    assert "cost unknown" in est.describe()


def test_chat_without_max_tokens_assumes_the_default_worst_case() -> None:
    est = estimate_cost(chat_prompts(), Prices(1.0, 10.0, "test table"))
    assert est.worst_output_tokens == 2 * DEFAULT_WORST_OUTPUT_TOKENS
    assert est.typical_output_tokens == 2 * TYPICAL_OUTPUT_TOKENS
    assert "4,096 assumed for 2 lines without one" in est.method
    assert est.worst_usd == pytest.approx((est.input_tokens + 10 * 8192) / 1e6)
    assert est.typical_usd == pytest.approx((est.input_tokens + 10 * 512) / 1e6)
    line = est.describe()
    assert line.startswith("2 requests, ~") and "up to 8,192 output tokens" in line
    assert f"{usd(est.worst_usd)} worst case" in line and "prices: test table" in line


def test_chat_max_completion_tokens_wins_and_n_multiplies() -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "Describe it."}]}]
    body = {"model": "m", "messages": messages, "max_completion_tokens": 50, "max_tokens": 900}
    est = estimate_cost(bodies("/v1/chat/completions", [{**body, "n": 3}]), None)
    assert est.input_tokens == approx("Describe it.") + chat_overhead(1)
    assert (est.worst_output_tokens, est.typical_output_tokens) == (150, 150)


def test_completions_count_strings_and_token_lists_and_default_to_16() -> None:
    items = [
        {"model": "m", "prompt": "Once upon a time", "max_tokens": 300},
        {"model": "m", "prompt": [1, 2, 3, 4, 5]},
    ]
    est = estimate_cost(bodies("/v1/completions", items), None)
    assert est.input_tokens == approx("Once upon a time") + 5
    assert est.worst_output_tokens == 300 + 16
    assert est.typical_output_tokens == TYPICAL_OUTPUT_TOKENS + 16
    assert "16 (the API default) for 1 lines without one" in est.method


def test_embeddings_have_no_output_and_use_published_prices() -> None:
    items = [
        {"model": "text-embedding-3-small", "input": ["first text", "second one"]},
        {"model": "text-embedding-3-small", "input": [[5, 6, 7], [8]]},
    ]
    prices = published_batch_prices("openai", "text-embedding-3-small")
    est = estimate_cost(bodies("/v1/embeddings", items), prices)
    assert est.input_tokens == approx("first text", "second one") + 4
    assert (est.typical_output_tokens, est.worst_output_tokens) == (0, 0)
    assert "no output tokens" in est.method and "OpenAI Batch API" in est.method
    assert est.worst_usd == est.typical_usd == pytest.approx(est.input_tokens * 0.01 / 1e6)


def test_responses_count_instructions_messages_and_max_output_tokens() -> None:
    parts = [{"type": "input_text", "text": "Rate this review."}]
    items = [
        {"model": "m", "input": "Say hi", "instructions": "Be brief.", "max_output_tokens": 40},
        {"model": "m", "input": [{"role": "user", "content": parts}]},
    ]
    est = estimate_cost(bodies("/v1/responses", items), None)
    first = approx("Say hi", "Be brief.") + chat_overhead(2)
    second = approx("Rate this review.") + chat_overhead(1)
    assert est.input_tokens == first + second
    assert est.worst_output_tokens == 40 + DEFAULT_WORST_OUTPUT_TOKENS
    assert est.typical_output_tokens == 40 + TYPICAL_OUTPUT_TOKENS


def test_moderations_have_no_output() -> None:
    items = [{"model": "omni-moderation-latest", "input": "is this fine?"}]
    est = estimate_cost(bodies("/v1/moderations", items), None)
    assert (est.input_tokens, est.worst_output_tokens) == (approx("is this fine?"), 0)


def test_several_models_are_priced_per_model() -> None:
    items = [
        {"model": "gpt-4o", "prompt": "a" * 40, "max_tokens": 10},
        {"model": "gpt-4o-mini", "prompt": "b" * 80, "max_tokens": 20},
    ]
    encoded = bodies("/v1/completions", items)
    prices = {m: resolve_prices("openai", m, None, None) for m in set(encoded.models)}
    est = estimate_cost(encoded, prices)
    worst = (10 * 1.25 + 10 * 5.0 + 20 * 0.075 + 20 * 0.30) / 1e6
    assert est.worst_usd == pytest.approx(worst)
    missing = estimate_cost(encoded, {"gpt-4o": prices["gpt-4o"]})
    assert missing.worst_usd is None and "no prices for gpt-4o-mini" in missing.method


def test_published_prices_are_dated_and_cover_only_found_figures() -> None:
    mini = published_batch_prices("openai", "gpt-4o-mini")
    assert mini is not None and (mini.input_per_million, mini.output_per_million) == (0.075, 0.3)
    assert "seen 2026-" in mini.source and "openai.com/api/pricing" in mini.source
    assert published_batch_prices("openai", "gpt-4o-2024-05-13") is None
    assert published_batch_prices("inference.net", definitions.MODEL) is None
    assert published_batch_prices("compatible", "gpt-4o") is None


def test_resolve_prices_explicit_settings_override_the_table() -> None:
    explicit = resolve_prices("openai", "gpt-4o-mini", 1.0, 2.0)
    assert explicit == Prices(1.0, 2.0, "resource settings")
    table = resolve_prices("openai", "gpt-4o-mini", None, None)
    assert table == published_batch_prices("openai", "gpt-4o-mini")
    assert resolve_prices("inference.net", definitions.MODEL, None, None) is None
    est = estimate_cost(chat_prompts(max_tokens=10), explicit)
    assert est.worst_usd == pytest.approx((est.input_tokens * 1.0 + 20 * 2.0) / 1e6)
    assert "prices: resource settings" in est.method


@pytest.mark.parametrize(
    ("given", "missing"),
    [((1.0, None), "price_per_million_output_tokens"), ((None, 2.0), "price_per_million_input")],
)
def test_resolve_prices_refuses_one_setting_alone(given: tuple, missing: str) -> None:
    with pytest.raises(ValueError, match=missing):
        resolve_prices("openai", "gpt-4o", *given)


def test_budget_guard_names_estimate_budget_rows_and_remedies() -> None:
    encoded = chat_prompts()
    est = estimate_cost(encoded, Prices(2.0, 8.0, "test table"))
    assert est.worst_usd is not None
    check_budget(est, est.worst_usd)
    check_budget(est, None)
    with pytest.raises(BudgetExceeded) as caught:
        check_budget(est, est.worst_usd / 2)
    message = str(caught.value)
    assert isinstance(caught.value, InvalidBatchInput)
    assert caught.value.estimate is est and caught.value.max_cost_usd == est.worst_usd / 2
    assert usd(est.worst_usd) in message and f"max_cost_usd={usd(est.worst_usd / 2)}" in message
    assert f"{len(encoded)} rows" in message
    assert f"~{est.input_tokens:,} input tokens" in message
    assert f"{est.worst_output_tokens:,} output tokens" in message
    for remedy in ("raise max_cost_usd", "filter out rows", "lower max_tokens"):
        assert remedy in message


def test_budget_without_prices_asks_for_the_price_settings() -> None:
    est = estimate_cost(chat_prompts(max_tokens=5), None)
    check_budget(est, None)
    with pytest.raises(BudgetExceeded) as caught:
        check_budget(est, 100.0)
    message = str(caught.value)
    assert "no prices are known" in message and "max_cost_usd=$100.00" in message
    assert "price_per_million_input_tokens" in message
    assert "price_per_million_output_tokens" in message


def test_describe_is_one_line() -> None:
    est = CostEstimate(1000, 52_000, 256_000, 4_096_000, 0.12, 0.3, "how")
    assert est.describe() == (
        "1,000 requests, ~52,000 input tokens, up to 4,096,000 output tokens "
        "(~256,000 typical): $0.12 typical, $0.30 worst case (how)"
    )


class FakeEncoding:
    name = "o200k_base"

    def encode_ordinary_batch(self, texts: list[str]) -> list[list[int]]:
        return [[0] * len(t.split()) for t in texts]


@pytest.fixture
def fake_tiktoken(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """A stand-in tiktoken: gpt-4o's files are cached; any other OpenAI model would need a
    download, which goes through ``tiktoken.load.read_file`` (recorded)."""
    downloads: list[str] = []
    load = types.ModuleType("tiktoken.load")

    def read_file(blobpath: str) -> bytes:
        downloads.append(blobpath)
        return b""

    load.read_file = read_file  # type: ignore[attr-defined]

    def encoding_for_model(model: str) -> FakeEncoding:
        if model == "gpt-4o":
            return FakeEncoding()
        if model.startswith("gpt-"):
            load.read_file("https://example.invalid/cl100k_base.tiktoken")  # type: ignore[attr-defined]
            return FakeEncoding()
        raise KeyError(model)

    fake = types.ModuleType("tiktoken")
    fake.load = load  # type: ignore[attr-defined]
    fake.encoding_for_model = encoding_for_model  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tiktoken", fake)
    monkeypatch.setitem(sys.modules, "tiktoken.load", load)
    _tiktoken_encoding.cache_clear()
    yield downloads
    _tiktoken_encoding.cache_clear()


def test_tiktoken_counts_when_its_files_are_cached_and_never_downloads(
    fake_tiktoken: list[str],
) -> None:
    items = [
        {"model": "gpt-4o", "prompt": "one two three four", "max_tokens": 1},
        {"model": "gpt-3.5-turbo-instruct", "prompt": "one two three four", "max_tokens": 1},
        {"model": "llama", "prompt": "one two three four", "max_tokens": 1},
    ]
    est = estimate_cost(bodies("/v1/completions", items), None)
    assert est.input_tokens == 4 + 2 * approx("one two three four")
    assert "tiktoken o200k_base for gpt-4o" in est.method
    assert "approximation: 4 characters per token, 3 per message for " in est.method
    assert fake_tiktoken == []  # the download was refused before reaching read_file


def demo_requests() -> tuple[pd.DataFrame, Any]:
    """The demo's 60 review prompts, built as ``definitions.review_insights`` builds them."""
    source = files("dagster_inference_batch") / "data" / "reviews.csv"
    with source.open("r", encoding="utf-8") as handle:
        reviews = pd.read_csv(handle, dtype={"review_id": str})
    encoded = build_requests(
        reviews,
        id_column="review_id",
        messages=definitions.review_messages,
        model=definitions.MODEL,
        body_params={"max_tokens": 200, "temperature": 0},
        response_model=definitions.ReviewInsight,
    )
    return reviews, encoded


def test_estimate_is_close_to_the_local_servers_input_tokens(
    batch_server: Callable[..., LocalBatchServer],
) -> None:
    reviews, encoded = demo_requests()
    assert len(encoded) == len(reviews) == 60
    est = estimate_cost(encoded, resolve_prices("inference.net", definitions.MODEL, 0.02, 0.05))
    server = batch_server(api_key="test-key")
    with InferenceBatchClient(api_key="test-key", base_url=server.base_url) as client:
        job = client.wait(client.submit(encoded), poll_interval=0.1)
        results = client.results(job)
    assert (results["status"] == "succeeded").all()
    reported = int(results["prompt_tokens"].sum())
    assert abs(est.input_tokens - reported) <= SERVER_TOLERANCE * reported
    assert est.worst_output_tokens == 60 * 200
    assert int(results["completion_tokens"].sum()) <= est.worst_output_tokens
