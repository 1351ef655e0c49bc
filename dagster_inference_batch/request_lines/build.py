"""Request lines built from a DataFrame, one per row: from prompts, messages or bodies.

Prompts take a fast path: the line is encoded once as a template and each row's JSON
is spliced in as bytes. Messages and ready bodies go through the generic checks of
:func:`encode_requests`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import orjson
import pandas as pd

from ..errors import InvalidBatchInput
from ..providers import DEFAULT_PROVIDER, ProviderProfile, provider_profile
from ..structured_output import StructuredOutput, request_params, structured_output
from .encode import encode_numbered_lines
from .encoded import EncodedRequests
from .fingerprint import SplicedFingerprints, TemplateFingerprints
from .frame_terms import FrameTerms, in_frame_terms
from .inputs import content_key
from .validate import (
    CHAT_ENDPOINT,
    DEFAULT_MAX_LINE_BYTES,
    EMBEDDINGS_ENDPOINT,
    MISSING_ID,
    RESPONSES_ENDPOINT,
    Problems,
    check_custom_ids,
    check_endpoint,
    check_line_sizes,
    check_prompt_source,
    column_ids,
    custom_id_problem,
    dumps_checked,
    invalid_text,
    where,
)
from .write import CHUNK_LINES

MessagesFn = Callable[[dict[str, Any]], list[dict[str, Any]]]


def _body_params(
    *,
    endpoint: str,
    model: str | None,
    prompt_column: str | None,
    messages: MessagesFn | None,
    body_column: str | None,
    system_prompt: str | None,
    body_params: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The keys every body gets, after checking the options go together."""
    check_endpoint(endpoint)
    if messages is not None and endpoint not in (CHAT_ENDPOINT, RESPONSES_ENDPOINT):
        hint = "prompt_column for the text to embed" if endpoint == EMBEDDINGS_ENDPOINT else ""
        raise ValueError(
            f"messages= builds chat or Responses requests; the endpoint is {endpoint!r}"
            + (f": use {hint}" if hint else "")
        )
    if system_prompt is not None and (prompt_column is None or endpoint != CHAT_ENDPOINT):
        raise ValueError("system_prompt goes with prompt_column on the chat endpoint")
    params = dict(body_params or {})
    key = content_key(endpoint)
    if body_column is None and key in params:
        raise ValueError(f"body_params may not set {key!r}: it is built per row")
    if model is not None:
        params["model"] = model
    return params


def _check_frame(
    df: pd.DataFrame,
    id_column: str,
    content_column: str | None,
    body_column: str | None,
    params: dict[str, Any],
) -> None:
    """Raise what is wrong with the DataFrame as a whole (columns, rows, model)."""
    problems = Problems()
    for column, role in ((id_column, "id"), (content_column, "content")):
        if column is not None and column not in df.columns:
            problems.add(f"missing {role} column {column!r}; columns: {list(df.columns)}")
    if body_column is None and not (isinstance(params.get("model"), str) and params["model"]):
        problems.add("body lacks a string model: pass model=... or body_params={'model': ...}")
    if len(df) == 0:
        problems.add("no request lines: the DataFrame is empty")
    problems.raise_if_any()


def _check_prompts(prompts: pd.Series, ids: list[Any], problems: Problems) -> None:
    """Report prompts that are missing, not a string, or empty."""

    def describe(i: int) -> str:
        value = prompts.iloc[i]
        if isinstance(value, str):
            rule = "empty prompt"
        elif custom_id_problem(value) == MISSING_ID:  # None, NaN or pd.NA
            rule = "empty prompt (missing value)"
        else:
            rule = f"prompt must be a string, got {type(value).__name__}"
        return f"{where(i + 1, ids[i])}: {rule}"

    problems.add_rows(invalid_text(prompts), describe, range(1, len(prompts) + 1))


def _placeholder() -> str:
    """A marker no id or prompt can contain by chance, cut out of the encoded template."""
    return f"@@{uuid.uuid4().hex}@@"


def _json_strings(values: list[str], start: int, ids: list[str], problems: Problems) -> list[bytes]:
    """JSON-escaped contents (no quotes) of non-empty strings, from one orjson call.

    In compact JSON a list of strings splits exactly at ``","``: inside a string every
    quote is escaped, so ``"`` preceded by ``,`` only opens the next element.
    """
    try:
        return orjson.dumps(values)[2:-2].split(b'","')
    except orjson.JSONEncodeError:  # lone surrogates: report each one
        return [
            (dumps_checked(v, f"{where(i + 1, ids[i])}: text", problems, i + 1) or b"")[1:-1]
            for i, v in enumerate(values, start)
        ]


def _line_template(
    endpoint: str, body: dict[str, Any], system_prompt: str | None, problems: Problems
) -> tuple[bytes, bytes, bytes, TemplateFingerprints] | None:
    """The encoded line cut around its id and prompt: ``head + id + middle + prompt + tail``,
    and the fingerprints of its bodies by prompt."""
    id_mark, prompt_mark = _placeholder(), _placeholder()
    params = {k: v for k, v in body.items() if k != "model"}
    if endpoint == CHAT_ENDPOINT:
        messages = [{"role": "user", "content": prompt_mark}]
        if system_prompt is not None:
            messages.insert(0, {"role": "system", "content": system_prompt})
        body = {"model": body["model"], "messages": messages, **params}
    else:
        body = {"model": body["model"], content_key(endpoint): prompt_mark, **params}
    template = dumps_checked(
        {"custom_id": id_mark, "method": "POST", "url": endpoint, "body": body},
        "body_params",
        problems,
        0,
    )
    if template is None:
        return None
    head, rest = template.split(id_mark.encode())
    middle, tail = rest.split(prompt_mark.encode())
    return head, middle, tail, TemplateFingerprints(endpoint, body, prompt_mark)


def _prompt_lines(
    ids: list[str],
    prompts: pd.Series,
    endpoint: str,
    body: dict[str, Any],
    system_prompt: str | None,
    max_line_bytes: int,
    problems: Problems,
) -> tuple[list[bytes], SplicedFingerprints | None]:
    """The fast path: per-row JSON spliced into the line template as bytes; the lines
    and how to work out their fingerprints (hashing a million prompts costs about a
    second, and only incremental runs need them).

    Works in chunks so the intermediate objects (prompts as Python str, their JSON) stay
    few and their memory is reused: fresh memory is what costs most here.
    """
    template = _line_template(endpoint, body, system_prompt, problems)
    if template is None:
        return [], None
    head, middle, tail, fingerprints = template
    lines: list[bytes] = []
    starts: list[np.ndarray] = []  # where each line's prompt begins
    for start in range(0, len(ids), CHUNK_LINES):
        chunk = slice(start, start + CHUNK_LINES)
        id_json = _json_strings(ids[chunk], start, ids, problems)
        prompt_json = _json_strings(prompts.iloc[chunk].tolist(), start, ids, problems)
        new = [head + i + middle + p + tail for i, p in zip(id_json, prompt_json, strict=True)]
        check_line_sizes(new, start, ids, max_line_bytes, problems)  # while the chunk is hot
        lines += new
        starts.append(np.fromiter(map(len, id_json), np.int64, len(id_json)))
    offsets = np.concatenate(starts) + len(head) + len(middle)  # (never empty: rows checked)
    return lines, SplicedFingerprints(fingerprints, offsets, len(tail))


def _from_prompts(
    df: pd.DataFrame,
    id_column: str,
    prompt_column: str,
    endpoint: str,
    params: dict[str, Any],
    system_prompt: str | None,
    max_line_bytes: int,
) -> EncodedRequests:
    """Lines whose content is one prompt per row (the fast path)."""
    problems = Problems()
    ids = column_ids(df[id_column])
    id_col = df[id_column]
    bad = invalid_text(id_col) if isinstance(id_col.dtype, pd.StringDtype) else None
    check_custom_ids(ids, problems, range(1, len(ids) + 1), bad)
    prompts = df[prompt_column]
    _check_prompts(prompts, ids, problems)
    problems.raise_if_any()  # from here on every id and prompt is a non-empty str
    lines, fingerprinter = _prompt_lines(
        ids, prompts, endpoint, params, system_prompt, max_line_bytes, problems
    )
    problems.raise_if_any()
    counts = [1] * len(lines) if endpoint == EMBEDDINGS_ENDPOINT else None  # one text per line
    return EncodedRequests(
        endpoint, ids, lines, [params["model"]] * len(lines), counts, fingerprinter=fingerprinter
    )


def _bodies_from_messages(
    df: pd.DataFrame, ids: list[Any], messages: MessagesFn, params: dict[str, Any], key: str
) -> list[dict[str, Any]]:
    """One body per row with ``messages(row)`` under ``key`` (``messages`` for chat,
    ``input`` for Responses); raises if one returns no messages."""
    problems = Problems()
    bodies = []
    for line, row in enumerate(df.to_dict("records"), 1):
        built = messages(row)
        if not isinstance(built, list) or not built:
            problems.add(
                f"{where(line, ids[line - 1])}: messages function returned "
                f"{type(built).__name__}, not a non-empty list",
                line,
            )
        bodies.append({**params, key: built})
    problems.raise_if_any()
    return bodies


def build_requests(
    df: pd.DataFrame,
    *,
    id_column: str = "custom_id",
    endpoint: str = CHAT_ENDPOINT,
    model: str | None = None,
    prompt_column: str | None = None,
    messages: MessagesFn | None = None,
    body_column: str | None = None,
    system_prompt: str | None = None,
    body_params: Mapping[str, Any] | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    response_model: Any = None,
    provider: str | ProviderProfile = DEFAULT_PROVIDER,
) -> EncodedRequests:
    """Build validated request lines from a DataFrame, one per row.

    Give exactly one source of content: ``prompt_column``, ``messages`` or
    ``body_column`` (see :func:`check_prompt_source`).

    Args:
        df: The rows, one request each.
        id_column: Column of ids: strings, or integers that become decimal strings.
        endpoint: The url every line posts to, one of ``ENDPOINTS``.
        model: The ``model`` of every body.
        prompt_column: Column of prompt strings: the user message for chat, the
            ``prompt`` for completions, the ``input`` for embeddings (the text to
            embed) and Responses.
        messages: Function of the row as a dict returning its chat messages (chat,
            or Responses, where they become the ``input`` list).
        body_column: Column of ready body dicts; their own keys win over ``model``
            and ``body_params``.
        system_prompt: A system message before each prompt (chat, with
            ``prompt_column`` only).
        body_params: Keys for every body (``max_tokens``, ``temperature``,
            ``response_format``; ``dimensions``, ``encoding_format`` for embeddings).
        max_line_bytes: The largest encoded line allowed, newline excluded.
        response_model: A Pydantic model class or a JSON schema dict: every body asks
            for JSON of that shape (``response_format``, or ``text`` on Responses; see
            ``structured_output.request_params``). Not with ``body_params`` setting the
            format itself. Ready bodies (``body_column``) keep their own format if set.
        provider: The provider (name or profile) whose way of asking for structured
            output is used (``json_schema``, strict or not, or ``json_object`` with the
            schema in a system message).

    Returns:
        The validated lines, in row order.

    Raises:
        ValueError: If the options do not go together (not exactly one content
            source, ``messages`` off chat and Responses, ``system_prompt`` off chat,
            ``body_params`` setting the per-row content, or the response format
            beside ``response_model``, a ``response_model`` off chat and Responses).
        InvalidBatchInput: Naming each bad row by its index label, ``id_column`` and
            ``custom_id``, and the prompt or body column: a missing column or model, no
            rows, a missing, empty or duplicate id, an empty prompt, NaN or infinity, a
            line over ``max_line_bytes``.

    Example:
        >>> df = pd.DataFrame({"custom_id": ["a", "b"], "prompt": ["Hi", "Bye"]})
        >>> enc = build_requests(df, model="m", prompt_column="prompt",
        ...                      body_params={"max_tokens": 8})
        >>> enc.lines[1]
        b'{"custom_id":"b","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[{"role":"user","content":"Bye"}],"max_tokens":8}}'
        >>> enc = build_requests(df, model="m", messages=lambda row: [
        ...     {"role": "system", "content": "Be brief."},
        ...     {"role": "user", "content": row["prompt"]}])
        >>> enc.custom_ids, len(enc)
        (['a', 'b'], 2)
        >>> enc = build_requests(df, endpoint="/v1/embeddings", model="e",
        ...                      prompt_column="prompt", body_params={"dimensions": 4})
        >>> enc.lines[0]
        b'{"custom_id":"a","method":"POST","url":"/v1/embeddings","body":{"model":"e","input":"Hi","dimensions":4}}'
    """
    check_prompt_source(prompt_column=prompt_column, messages=messages, body_column=body_column)
    structured = structured_output(response_model)
    if structured is not None:
        body_params, system_prompt, messages = _with_structured_output(
            structured, provider, endpoint, body_params, system_prompt, messages,
            prompt_column is not None,
        )  # fmt: skip
    params = _body_params(
        endpoint=endpoint,
        model=model,
        prompt_column=prompt_column,
        messages=messages,
        body_column=body_column,
        system_prompt=system_prompt,
        body_params=body_params,
    )
    _check_frame(df, id_column, prompt_column or body_column, body_column, params)
    terms = FrameTerms(
        labels=df.index,
        id_column=id_column,
        content_column=prompt_column or body_column,
        content="prompt" if prompt_column is not None else "body",
    )
    try:
        if prompt_column is not None:
            return _from_prompts(
                df, id_column, prompt_column, endpoint, params, system_prompt, max_line_bytes
            )
        return _from_bodies(df, id_column, endpoint, params, messages, body_column, max_line_bytes)
    except InvalidBatchInput as error:
        raise in_frame_terms(error, terms) from None


def _with_structured_output(
    structured: StructuredOutput,
    provider: str | ProviderProfile,
    endpoint: str,
    body_params: Mapping[str, Any] | None,
    system_prompt: str | None,
    messages: MessagesFn | None,
    from_prompts: bool,
) -> tuple[dict[str, Any], str | None, MessagesFn | None]:
    """``body_params``, ``system_prompt`` and ``messages`` asking for ``structured``."""
    profile = provider_profile(provider) if isinstance(provider, str) else provider
    extra, instruction = request_params(structured, profile, endpoint)
    params = dict(body_params or {})
    taken = sorted(set(extra) & set(params))
    if taken:
        raise ValueError(f"body_params may not set {taken[0]!r} beside response_model")
    params.update(extra)
    if instruction is None:
        return params, system_prompt, messages
    if endpoint == RESPONSES_ENDPOINT:
        given = params.get("instructions")
        params["instructions"] = f"{given}\n\n{instruction}" if given else instruction
    elif from_prompts:
        system_prompt = f"{system_prompt}\n\n{instruction}" if system_prompt else instruction
    elif messages is not None:
        build = messages

        def messages(row: dict[str, Any]) -> list[dict[str, Any]]:
            return [{"role": "system", "content": instruction}, *build(row)]

    return params, system_prompt, messages


def _from_bodies(
    df: pd.DataFrame,
    id_column: str,
    endpoint: str,
    params: dict[str, Any],
    messages: MessagesFn | None,
    body_column: str | None,
    max_line_bytes: int,
) -> EncodedRequests:
    """Lines from ready bodies or from ``messages(row)``, through the generic checks."""
    ids = column_ids(df[id_column])
    if body_column is not None:
        bodies = [
            {**params, **body} if isinstance(body, Mapping) else body
            for body in df[body_column].tolist()
        ]
    else:
        assert messages is not None  # check_prompt_source saw to it
        bodies = _bodies_from_messages(df, ids, messages, params, content_key(endpoint))
    requests = [{"custom_id": i, "body": body} for i, body in zip(ids, bodies, strict=True)]
    return encode_numbered_lines(list(enumerate(requests, 1)), endpoint, max_line_bytes)
