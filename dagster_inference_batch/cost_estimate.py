"""A job's cost, estimated from the request lines actually sent, and a budget guard (issue 11).

Input tokens:
    With ``tiktoken`` importable, an encoding for the model (OpenAI model names) and that
    encoding's files already on this machine, each text is counted with it; tiktoken is
    never allowed to download (any failure falls back). Otherwise an approximation:
    ``ceil(characters / 4)`` per text part (the rule of thumb for English prose with BPE
    tokenizers), plus ``MESSAGE_OVERHEAD_TOKENS`` (3) per chat or Responses message (role
    and delimiters) and ``REPLY_OVERHEAD_TOKENS`` (3) per such request for the start of the
    reply. Token lists (completions prompts, embeddings inputs) count exactly. Not counted:
    images, audio, tool definitions and ``response_format`` schemas.

    Tolerance: on the demo's 60 review prompts (``definitions.py``) the approximation is
    within ±25% of the input tokens the package's local server reports (checked in
    ``tests/test_cost_estimate.py``; it came out about 6% above). Against real tokenizers
    expect roughly ±25% on English prose, more on code and non-Latin scripts.

Output tokens:
    The worst case is each line's limit: ``max_completion_tokens`` else ``max_tokens``
    (chat), ``max_tokens`` (completions), ``max_output_tokens`` (Responses), times ``n``
    choices. A chat or Responses line without one is assumed to write
    ``DEFAULT_WORST_OUTPUT_TOKENS`` (4096); a completions line without one gets the API's
    default of 16. The typical case is ``min(limit, TYPICAL_OUTPUT_TOKENS)`` (256, a
    paragraph) per choice. Embeddings and moderations produce no output tokens.

Prices:
    :func:`resolve_prices` takes the resource settings when both are set, else
    :func:`published_batch_prices`: a small dated table of published batch prices.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any

import orjson

from .errors import InvalidBatchInput
from .providers import CHAT, COMPLETIONS, EMBEDDINGS, MODERATIONS, RESPONSES
from .request_lines import EncodedRequests

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_TOKENS = 3
REPLY_OVERHEAD_TOKENS = 3
DEFAULT_WORST_OUTPUT_TOKENS = 4096
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
TYPICAL_OUTPUT_TOKENS = 256
APPROXIMATION = (
    f"approximation: {CHARS_PER_TOKEN} characters per token, {MESSAGE_OVERHEAD_TOKENS} per message"
)
_TIKTOKEN_CHUNK = 10_000  # texts per tiktoken call: bounds the token lists held at once

_OPENAI_SOURCE = (
    "OpenAI Batch API prices (50% of standard), as copied from openai.com/api/pricing by "
    "aicosthub.com/guides/openai-batch-api-cost-savings, "
    "apicalculators.com/blog/openai-batch-api-cost-2026 and embeddingcost.com/openai; "
    "seen 2026-11-28"
)
# USD per million (input, output) tokens. Inference.net publishes no batch price we could
# find (searched 2026-11-28), so its models are absent and need the resource settings.
_PUBLISHED: dict[str, tuple[str, dict[str, tuple[float, float]]]] = {
    "openai": (
        _OPENAI_SOURCE,
        {
            "gpt-4o": (1.25, 5.00),
            "gpt-4o-mini": (0.075, 0.30),
            "gpt-4.1": (1.00, 4.00),
            "text-embedding-3-small": (0.01, 0.0),
            "text-embedding-3-large": (0.065, 0.0),
        },
    ),
}


@dataclass(frozen=True)
class Prices:
    """USD per million tokens, and where the figures came from.

    Example:
        >>> Prices(0.075, 0.30, "resource settings").output_per_million
        0.3
    """

    input_per_million: float
    output_per_million: float
    source: str


def published_batch_prices(provider: str, model: str) -> Prices | None:
    """The published batch price of a model at a provider, from a small dated table.

    Args:
        provider: The provider profile: ``openai`` or ``inference.net``.
        model: The ``body.model``, matched exactly (a dated snapshot may cost otherwise).

    Returns:
        The prices with their source and the date they were seen, or None when the table
        has no figure (every ``inference.net`` model, and unknown models or providers).

    Example:
        >>> prices = published_batch_prices("openai", "gpt-4o-mini")
        >>> prices.input_per_million, prices.output_per_million
        (0.075, 0.3)
        >>> published_batch_prices("inference.net", "meta-llama/llama-3.1-8b-instruct/fp-8")
    """
    source, table = _PUBLISHED.get(provider, ("", {}))
    found = table.get(model)
    return Prices(found[0], found[1], source) if found else None


def resolve_prices(
    provider: str,
    model: str,
    input_per_million: float | None,
    output_per_million: float | None,
) -> Prices | None:
    """The prices to estimate with: the resource settings when set, else the table.

    Args:
        provider: The provider profile.
        model: The model of the lines to price.
        input_per_million: ``price_per_million_input_tokens``, or None.
        output_per_million: ``price_per_million_output_tokens``, or None.

    Returns:
        Both settings as ``Prices`` (source ``resource settings``), else
        :func:`published_batch_prices`.

    Raises:
        ValueError: Only one of the two settings is set.

    Example:
        >>> resolve_prices("openai", "gpt-4o", 1.0, 2.0)
        Prices(input_per_million=1.0, output_per_million=2.0, source='resource settings')
        >>> resolve_prices("openai", "gpt-4o", None, None).input_per_million
        1.25
    """
    if input_per_million is not None and output_per_million is not None:
        return Prices(float(input_per_million), float(output_per_million), "resource settings")
    if input_per_million is not None or output_per_million is not None:
        missing = (
            "price_per_million_output_tokens"
            if output_per_million is None
            else "price_per_million_input_tokens"
        )
        raise ValueError(f"{missing} is not set: give both prices, or neither to use the table")
    return published_batch_prices(provider, model)


@dataclass(frozen=True)
class CostEstimate:
    """What a job should cost, made by :func:`estimate_cost`.

    Attributes:
        requests: Request lines.
        input_tokens: Input tokens, counted or approximated (see ``method``).
        typical_output_tokens: Output tokens if each choice writes a paragraph at most.
        worst_output_tokens: Output tokens if each line writes its whole limit.
        typical_usd: Cost at typical output; None without prices.
        worst_usd: Cost at worst-case output; None without prices.
        method: How tokens were counted and where prices came from.

    Example:
        >>> CostEstimate(2, 10, 20, 40, 0.5, 1.25, "m").describe()
        '2 requests, ~10 input tokens, up to 40 output tokens (~20 typical): $0.50 typical, $1.25 worst case (m)'
    """

    requests: int
    input_tokens: int
    typical_output_tokens: int
    worst_output_tokens: int
    typical_usd: float | None
    worst_usd: float | None
    method: str

    def describe(self) -> str:
        """One line for logs and errors.

        Returns:
            Requests, tokens, both costs (or that prices are unknown) and the method.
        """
        cost = (
            "cost unknown"
            if self.typical_usd is None or self.worst_usd is None
            else f"{usd(self.typical_usd)} typical, {usd(self.worst_usd)} worst case"
        )
        return (
            f"{self.requests:,} requests, ~{self.input_tokens:,} input tokens, up to "
            f"{self.worst_output_tokens:,} output tokens (~{self.typical_output_tokens:,} "
            f"typical): {cost} ({self.method})"
        )


def usd(amount: float) -> str:
    """A dollar amount for messages: cents, or two significant digits below a cent.

    Example:
        >>> usd(1234.5), usd(0.3), usd(0.000123), usd(0)
        ('$1,234.50', '$0.30', '$0.00012', '$0.00')
    """
    return f"${amount:,.2f}" if amount == 0 or amount >= 0.01 else f"${amount:.2g}"


@dataclass
class _Tally:
    """One model's lines, added up; ``texts`` gathers them for tiktoken when it counts."""

    encoding: Any
    texts: list[str] | None
    requests: int = 0
    input_tokens: int = 0
    typical: int = 0
    worst: int = 0
    defaulted: int = 0


# What one body sends: its texts, tokens known without a tokenizer (token lists, message
# overhead), its output limit as given (None or junk when unset) and its ``n``.
_Measured = tuple[list[str], int, Any, Any]


def estimate_cost(
    encoded: EncodedRequests, prices: Prices | Mapping[str, Prices | None] | None
) -> CostEstimate:
    """Estimate a job's tokens and cost from its request lines, before upload.

    One pass over the lines, one ``orjson.loads`` each: about a million lines in a few
    seconds.

    Args:
        encoded: The lines to be sent.
        prices: One price for every line, or a price per ``body.model`` (build it with
            :func:`resolve_prices` for each of ``set(encoded.models)``); None, or a model
            missing from the mapping, leaves the USD figures None.

    Returns:
        The estimate; ``method`` says how tokens were counted and where prices came from.

    Example:
        >>> from dagster_inference_batch import build_requests
        >>> enc = build_requests(pd.DataFrame({"custom_id": ["a"], "prompt": ["Hi there, robot"]}),
        ...     model="m", prompt_column="prompt", body_params={"max_tokens": 100})
        >>> est = estimate_cost(enc, Prices(1.0, 2.0, "resource settings"))
        >>> est.input_tokens, est.typical_output_tokens, est.worst_output_tokens, est.worst_usd
        (10, 100, 100, 0.00021)
        >>> estimate_cost(enc.subset([]), None).method
        'nothing to send'
    """
    if not len(encoded):
        return CostEstimate(0, 0, 0, 0, 0.0, 0.0, "nothing to send")
    endpoint = encoded.endpoint
    measure = _MEASURES.get(endpoint, _plain)
    writes = endpoint not in (EMBEDDINGS, MODERATIONS)
    default = (
        COMPLETIONS_DEFAULT_MAX_TOKENS if endpoint == COMPLETIONS else DEFAULT_WORST_OUTPUT_TOKENS
    )
    tallies: dict[str, _Tally] = {}
    loads = orjson.loads
    for model, line in zip(encoded.models, encoded.lines, strict=True):
        tally = tallies.get(model)
        if tally is None:
            encoding = _tiktoken_encoding(model)
            tally = tallies[model] = _Tally(encoding, None if encoding is None else [])
        texts, tokens, limit, choices = measure(loads(line)["body"])
        tally.requests += 1
        if tally.texts is None:
            tokens += sum(map(_approximate, texts))
        else:
            tally.texts += texts
        tally.input_tokens += tokens
        if not writes:
            continue
        if limit.__class__ is not int:  # unset (or not an integer: the provider refuses it)
            limit = default
            tally.defaulted += 1
        if choices.__class__ is not int or choices < 1:
            choices = 1
        tally.worst += limit * choices
        tally.typical += min(limit, TYPICAL_OUTPUT_TOKENS) * choices
    methods: dict[str, list[str]] = {}
    for model, tally in tallies.items():
        methods.setdefault(_count_texts(tally), []).append(model)
    typical_usd, worst_usd, price_note = _costs(tallies, prices)
    notes = [_join_methods(methods), _output_note(endpoint, tallies), price_note]
    return CostEstimate(
        requests=len(encoded),
        input_tokens=sum(t.input_tokens for t in tallies.values()),
        typical_output_tokens=sum(t.typical for t in tallies.values()),
        worst_output_tokens=sum(t.worst for t in tallies.values()),
        typical_usd=typical_usd,
        worst_usd=worst_usd,
        method="; ".join(notes),
    )


def _message_texts(messages: Any, texts: list[str]) -> int:
    """Add the texts of chat or Responses messages (string content, or its parts' texts)
    to ``texts``; return how many messages there were."""
    if messages.__class__ is not list:
        return 0
    for message in messages:
        content = message.get("content") if message.__class__ is dict else None
        if content.__class__ is str:
            texts.append(content)
        elif content.__class__ is list:
            texts += [
                text
                for part in content
                if part.__class__ is dict and (text := part.get("text")).__class__ is str
            ]
    return len(messages)


def _chat(body: dict[str, Any]) -> _Measured:
    """A chat body: its messages; ``max_completion_tokens`` wins over ``max_tokens``."""
    texts: list[str] = []
    messages = _message_texts(body.get("messages"), texts)
    limit = body.get("max_completion_tokens")
    if limit is None:
        limit = body.get("max_tokens")
    overhead = MESSAGE_OVERHEAD_TOKENS * messages + REPLY_OVERHEAD_TOKENS
    return texts, overhead, limit, body.get("n")


def _responses(body: dict[str, Any]) -> _Measured:
    """A Responses body: ``input`` (a string is one message) and ``instructions``."""
    value = body.get("input")
    texts: list[str] = []
    messages = _message_texts(value if isinstance(value, list) else [{"content": value}], texts)
    instructions = body.get("instructions")
    if isinstance(instructions, str):  # a system message of its own
        texts.append(instructions)
        messages += 1
    overhead = MESSAGE_OVERHEAD_TOKENS * messages + REPLY_OVERHEAD_TOKENS
    return texts, overhead, body.get("max_output_tokens"), None


def _plain(body: dict[str, Any]) -> _Measured:
    """A completions ``prompt`` or an embeddings or moderations ``input``: a string, a
    token list, or a list of strings, token lists or ``{"text"}`` parts."""
    value = body.get("prompt", body.get("input"))
    limit, choices = body.get("max_tokens"), body.get("n")
    if isinstance(value, str):
        return [value], 0, limit, choices
    if not isinstance(value, list):
        return [], 0, limit, choices
    if value and all(isinstance(v, int) for v in value):
        return [], len(value), limit, choices
    texts = [v for v in value if isinstance(v, str)]
    texts += [v["text"] for v in value if isinstance(v, dict) and isinstance(v.get("text"), str)]
    return texts, sum(len(v) for v in value if isinstance(v, list)), limit, choices


_MEASURES = {CHAT: _chat, RESPONSES: _responses}


def _output_note(endpoint: str, tallies: Mapping[str, _Tally]) -> str:
    """How output tokens were bounded, naming any limit that was assumed."""
    if endpoint in (EMBEDDINGS, MODERATIONS):
        return "no output tokens"
    note = f"output: each line's limit, typical at most {TYPICAL_OUTPUT_TOKENS}"
    defaulted = sum(t.defaulted for t in tallies.values())
    if not defaulted:
        return note
    if endpoint == COMPLETIONS:
        assumed = f"{COMPLETIONS_DEFAULT_MAX_TOKENS} (the API default)"
    else:
        assumed = f"{DEFAULT_WORST_OUTPUT_TOKENS:,} assumed"
    return f"{note}, {assumed} for {defaulted:,} lines without one"


def _count_texts(tally: _Tally) -> str:
    """Add tiktoken's count of the texts gathered for it to the tally (the approximation
    was added line by line); return how the model's tokens were counted."""
    if tally.texts is None:
        return APPROXIMATION
    texts, tally.texts = tally.texts, None
    try:
        tally.input_tokens += sum(
            sum(map(len, tally.encoding.encode_ordinary_batch(texts[i : i + _TIKTOKEN_CHUNK])))
            for i in range(0, len(texts), _TIKTOKEN_CHUNK)
        )
        return f"tiktoken {tally.encoding.name}"
    except Exception:  # any tokenizer failure: the approximation still answers
        tally.input_tokens += sum(map(_approximate, texts))
        return APPROXIMATION


def _approximate(text: str) -> int:
    """ceil(characters / CHARS_PER_TOKEN)."""
    return (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


_TIKTOKEN_LOCK = threading.Lock()


@contextmanager
def _no_downloads(load: Any) -> Iterator[None]:
    """While open, tiktoken refuses to fetch a URL for this thread: only files already on
    the machine (its cache) load. Other threads read as before."""
    original = load.read_file
    caller = threading.get_ident()

    def read_local(blobpath: str) -> bytes:
        if "://" in blobpath and threading.get_ident() == caller:
            raise OSError(f"not downloading {blobpath}: cost estimates stay offline")
        return original(blobpath)

    load.read_file = read_local
    try:
        yield
    finally:
        load.read_file = original


@cache
def _tiktoken_encoding(model: str) -> Any | None:
    """tiktoken's encoding for an OpenAI model when tiktoken is installed and the
    encoding's files are already on this machine; None otherwise."""
    try:
        import tiktoken
        import tiktoken.load

        with _TIKTOKEN_LOCK, _no_downloads(tiktoken.load):
            return tiktoken.encoding_for_model(model)
    except Exception:  # not installed, unknown model, files not cached: approximate
        return None


def _join_methods(methods: Mapping[str, list[str]]) -> str:
    """One counting method, or each with the models it counted."""
    if len(methods) == 1:
        return next(iter(methods))
    return "; ".join(f"{method} for {', '.join(models)}" for method, models in methods.items())


def _costs(
    tallies: Mapping[str, _Tally], prices: Prices | Mapping[str, Prices | None] | None
) -> tuple[float | None, float | None, str]:
    """Typical and worst-case USD over the models, and where the prices came from."""
    by_model = (
        {model: prices for model in tallies}
        if prices is None or isinstance(prices, Prices)
        else {model: prices.get(model) for model in tallies}
    )
    unpriced = [model for model, price in by_model.items() if price is None]
    if unpriced:
        return None, None, f"no prices for {', '.join(unpriced)}"
    typical = worst = 0.0
    sources: list[str] = []
    for model, tally in tallies.items():
        price = by_model[model]
        assert price is not None
        base = tally.input_tokens * price.input_per_million
        typical += (base + tally.typical * price.output_per_million) / 1e6
        worst += (base + tally.worst * price.output_per_million) / 1e6
        if price.source not in sources:
            sources.append(price.source)
    return typical, worst, "prices: " + ", ".join(sources)


class BudgetExceeded(InvalidBatchInput):
    """A job refused before upload: its worst-case cost estimate is above
    ``max_cost_usd``, or no prices are known to estimate it.

    Args:
        estimate: The job's estimate, kept in ``estimate``.
        max_cost_usd: The budget, kept in ``max_cost_usd``.

    Example:
        >>> error = BudgetExceeded(CostEstimate(3, 30, 9, 12, 0.5, 2.0, "m"), 1.0)
        >>> "$2.00" in str(error), "max_cost_usd=$1.00" in str(error), error.estimate.requests
        (True, True, 3)
    """

    def __init__(self, estimate: CostEstimate, max_cost_usd: float) -> None:
        self.estimate = estimate
        self.max_cost_usd = max_cost_usd
        super().__init__([_budget_problem(estimate, max_cost_usd)])


def _budget_problem(estimate: CostEstimate, max_cost_usd: float) -> str:
    """Why the job is refused: the estimate against the budget, or the prices missing."""
    budget = f"max_cost_usd={usd(max_cost_usd)}"
    drivers = (
        f"{estimate.requests:,} rows, ~{estimate.input_tokens:,} input tokens and up to "
        f"{estimate.worst_output_tokens:,} output tokens ({estimate.method})"
    )
    if estimate.worst_usd is None or estimate.typical_usd is None:
        return (
            f"{budget} is set but no prices are known to estimate the cost of {drivers}: "
            "set price_per_million_input_tokens and price_per_million_output_tokens on "
            "the resource, or unset max_cost_usd"
        )
    return (
        f"estimated worst-case cost {usd(estimate.worst_usd)} is above {budget} "
        f"(typical {usd(estimate.typical_usd)}), driven by {drivers}; to go ahead raise "
        "max_cost_usd, filter out rows, or lower max_tokens (the worst case assumes every "
        "line writes its whole limit)"
    )


def check_budget(estimate: CostEstimate, max_cost_usd: float | None) -> None:
    """Refuse a job whose worst-case cost is above the budget, before anything is uploaded.

    Args:
        estimate: The job's estimate (see :func:`estimate_cost`).
        max_cost_usd: The budget in USD; None checks nothing.

    Raises:
        BudgetExceeded: ``max_cost_usd`` is set and the worst case is above it, or no
            prices are known.

    Example:
        >>> estimate = CostEstimate(1, 10, 10, 10, 0.01, 0.02, "m")
        >>> check_budget(estimate, 0.05)
        >>> check_budget(estimate, None)
        >>> check_budget(estimate, 0.01)
        Traceback (most recent call last):
        ...
        dagster_inference_batch.cost_estimate.BudgetExceeded: invalid batch input (1 problem):
          - estimated worst-case cost $0.02 is above max_cost_usd=$0.01 ...
    """
    if max_cost_usd is None:
        return
    if estimate.worst_usd is None or estimate.worst_usd > max_cost_usd:
        raise BudgetExceeded(estimate, max_cost_usd)
