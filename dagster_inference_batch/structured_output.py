"""Structured output: a Pydantic model or a JSON schema in, validated typed columns out.

``StructuredOutput`` wraps what the user gave as ``response_model=`` (a Pydantic v2
model class, or a JSON schema dict) and does four things with it:

- the request's ``response_format`` (chat) or ``text.format`` (Responses): ``json_schema``
  with ``strict`` when the provider profile supports it and the schema can be made strict;
  a profile that only takes ``json_object`` gets the schema in a system message instead;
- validation of one answer's content: a model validates through the model, a schema
  through ``jsonschema-rs`` (compiled: about a hundred times faster than the pure-Python
  ``jsonschema`` on large results); a problem is one line naming the JSON path of the
  first error;
- validation of a parsed results table (rows ``succeeded`` whose content does not
  validate become ``invalid_output``), applied before the attempts are merged, so a valid
  answer beats an invalid one;
- typed columns from the validated answers: strings (``string``), integers (``Int64``),
  numbers (``Float64``), booleans (``boolean``), enums (``category``), lists as Arrow
  lists (``pd.ArrowDtype``), nested objects flattened as ``<field>__<subfield>``, and
  anything else (unions of types, free-form objects) as Python objects.

Only the JSON schema is read for the columns, so a model and its schema give the same
columns. This module knows nothing about Dagster.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import orjson
import pandas as pd
import pyarrow as pa

from .providers import ProviderProfile

INVALID_OUTPUT = "invalid_output"
NESTED_SEPARATOR = "__"
ResponseModel = Any  # a pydantic.BaseModel subclass, or a JSON schema dict
_NAME = re.compile(r"[^a-zA-Z0-9_-]")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_JSON_OBJECT_INSTRUCTION = (
    "Answer with one JSON object, and nothing else, that is valid against this JSON schema:"
)


def _is_model(value: Any) -> bool:
    from pydantic import BaseModel

    return isinstance(value, type) and issubclass(value, BaseModel)


class Problem(NamedTuple):
    """Why an answer is invalid: where (a JSON path), what kind, and the message.

    ``kind`` is ``not_json`` for an answer that does not parse, else the validator's
    name for the rule broken (Pydantic's error type, or the JSON schema rule:
    ``required``, ``enum``, ``type``, ...).

    Example:
        >>> str(Problem("$.mood", "enum", "Input should be 'happy' or 'sad'"))
        "$.mood: Input should be 'happy' or 'sad'"
    """

    path: str
    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class StructuredOutput:
    """What a pipeline asks the model to answer, and how answers are checked and typed.

    Args:
        response_model: A Pydantic (v2) model class, or a JSON schema dict (an object
            schema; draft 2020-12 unless it says otherwise with ``$schema``).

    Raises:
        TypeError: ``response_model`` is neither.
        ValueError: The schema is not a valid JSON schema, or not of an object.

    Example:
        >>> out = StructuredOutput({"type": "object", "title": "Mood",
        ...     "properties": {"mood": {"enum": ["happy", "sad"]}}, "required": ["mood"]})
        >>> out.name, out.check('{"mood": "happy"}'), out.check('{"mood": "meh"}')
        ('Mood', None, '$.mood: "meh" is not one of "happy" or "sad"')
    """

    def __init__(self, response_model: ResponseModel) -> None:
        if _is_model(response_model):
            self.model = response_model
            self.schema: dict[str, Any] = response_model.model_json_schema()
            self._validator = None
        elif isinstance(response_model, Mapping):
            import jsonschema_rs

            self.model = None
            self.schema = orjson.loads(orjson.dumps(dict(response_model)))
            try:  # the draft its $schema names, else 2020-12; the schema is checked too
                self._validator = jsonschema_rs.validator_for(self.schema)
            except jsonschema_rs.ValidationError as exc:
                first = str(exc).splitlines()[0]
                raise ValueError(f"response_model is not a valid JSON schema: {first}") from exc
        else:
            raise TypeError(
                "response_model must be a Pydantic model class or a JSON schema dict, not "
                f"{type(response_model).__name__}"
            )
        if self.schema.get("type", "object") != "object":
            raise ValueError(
                f"response_model must describe a JSON object, not {self.schema.get('type')!r}"
            )
        title = self.schema.get("title") or "response"
        self.name = _NAME.sub("_", str(title))[:64]

    # requests

    def strict_schema(self) -> dict[str, Any] | None:
        """The schema in the form strict structured outputs require, or None if it has none.

        Every object lists all its properties as required and forbids others, and
        ``default`` keywords go: an answer valid against the strict schema is valid
        against the original one (an optional Pydantic field, ``X | None``, still takes
        ``null``). Free-form objects (no ``properties``, or ``additionalProperties``
        allowed) cannot be strict.

        Returns:
            A strict copy of the schema, or None.

        Example:
            >>> StructuredOutput({"type": "object", "properties": {"a": {"type": "string"}}}
            ...     ).strict_schema()
            {'type': 'object', 'properties': {'a': {'type': 'string'}}, 'required': ['a'], 'additionalProperties': False}
        """
        try:
            return _strict(orjson.loads(orjson.dumps(self.schema)))
        except _NotStrict:
            return None

    def response_format(self, profile: ProviderProfile) -> dict[str, Any]:
        """The chat ``response_format`` for a provider.

        Args:
            profile: The provider's profile (``structured_output``, ``strict_json_schema``).

        Returns:
            ``{"type": "json_schema", "json_schema": {...}}``, or ``{"type": "json_object"}``
            for a profile that takes only that (the schema then goes in a system message,
            see :meth:`instruction`).

        Example:
            >>> from dagster_inference_batch.providers import provider_profile
            >>> out = StructuredOutput({"type": "object", "title": "T", "properties": {}})
            >>> out.response_format(provider_profile("openai"))["json_schema"]["strict"]
            True
        """
        if profile.structured_output == "json_object":
            return {"type": "json_object"}
        strict = self.strict_schema() if profile.strict_json_schema else None
        schema = strict if strict is not None else self.schema
        return {
            "type": "json_schema",
            "json_schema": {"name": self.name, "schema": schema, "strict": strict is not None},
        }

    def text_format(self, profile: ProviderProfile) -> dict[str, Any]:
        """The Responses API ``text`` option: the same format, flat.

        Args:
            profile: The provider's profile.

        Returns:
            ``{"format": {"type": "json_schema", "name", "schema", "strict"}}`` (or
            ``json_object``).

        Example:
            >>> from dagster_inference_batch.providers import provider_profile
            >>> out = StructuredOutput({"type": "object", "title": "T", "properties": {}})
            >>> out.text_format(provider_profile("openai"))["format"]["name"]
            'T'
        """
        chat = self.response_format(profile)
        if chat["type"] == "json_object":
            return {"format": chat}
        return {"format": {"type": "json_schema", **chat["json_schema"]}}

    def instruction(self) -> str:
        """The system message that carries the schema when only ``json_object`` is taken.

        Example:
            >>> StructuredOutput({"type": "object", "properties": {}}).instruction()
            'Answer with one JSON object, and nothing else, that is valid against this JSON schema: {"type":"object","properties":{}}'
        """
        return f"{_JSON_OBJECT_INSTRUCTION} {orjson.dumps(self.schema).decode()}"

    # answers

    def parse(self, content: Any) -> tuple[dict[str, Any] | None, Problem | None]:
        """One answer validated: its JSON value, or the first problem.

        Args:
            content: The answer's content (a string; anything else is a problem).

        Returns:
            ``(value, None)`` for a valid answer (a model's answer as
            ``model_dump(mode="json")``), else ``(None, problem)``.

        Example:
            >>> StructuredOutput({"type": "object", "properties": {}}).parse('{"a": 1')
            (None, Problem(path='$', kind='not_json', message='not JSON: unexpected end of data: line 1 column 8 (char 7)'))
        """
        if not isinstance(content, str):
            return None, Problem("$", "not_json", f"no text content ({type(content).__name__})")
        if self.model is not None:
            return self._parse_model(content)
        try:
            value = orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            return None, Problem("$", "not_json", f"not JSON: {exc}")
        assert self._validator is not None
        if self._validator.is_valid(value):
            return value, None
        error = min(self._validator.iter_errors(value), key=_error_order)
        kind = _CAMEL.sub("_", type(error.kind).__name__).lower()
        return None, Problem(_json_path(error.instance_path), kind, error.message)

    def _parse_model(self, content: str) -> tuple[dict[str, Any] | None, Problem | None]:
        from pydantic import ValidationError

        assert self.model is not None
        try:
            return self.model.model_validate_json(content).model_dump(mode="json"), None
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            if first["type"] == "json_invalid":
                return None, Problem("$", "not_json", f"not JSON: {first['msg']}")
            return None, Problem(_json_path(first["loc"]), first["type"], first["msg"])

    def check(self, content: Any) -> str | None:
        """The first problem of one answer as ``<JSON path>: <message>``, or None when
        it is valid (see :meth:`parse`).

        Example:
            >>> StructuredOutput({"type": "object", "required": ["a"]}).check("{}")
            '$: "a" is a required property'
        """
        problem = self.parse(content)[1]
        return None if problem is None else str(problem)

    def mark_invalid(self, table: pa.Table) -> tuple[pa.Table, list[dict[str, Any] | None]]:
        """Parsed result rows with ``succeeded`` rows that do not validate made
        ``invalid_output``: ``error_code`` ``invalid_output:<kind>`` (see ``Problem``),
        ``error_message`` ``<JSON path>: <message>``.

        Each answer is parsed once: the valid ones' values come back too, for
        :meth:`add_columns`.

        Args:
            table: Parsed result lines (``status``, ``content``, ``error_code``,
                ``error_message`` columns), as ``results.py`` reads them.

        Returns:
            The table with those rows' status and error set, and per row the valid
            answer's value (None for the other rows).

        Example:
            >>> out = StructuredOutput({"type": "object", "required": ["a"]})
            >>> table = pa.table({"status": ["succeeded", "succeeded"],
            ...     "content": ['{"a": 1}', "{}"], "error_code": pa.array([None, None], pa.string()),
            ...     "error_message": pa.array([None, None], pa.string())})
            >>> marked, values = out.mark_invalid(table)
            >>> marked["status"].to_pylist(), marked["error_code"].to_pylist(), values
            (['succeeded', 'invalid_output'], [None, 'invalid_output:required'], [{'a': 1}, None])
        """
        parsed = [
            self.parse(content) if state == "succeeded" else (None, None)
            for state, content in zip(
                table["status"].to_pylist(), table["content"].to_pylist(), strict=True
            )
        ]
        values = [value for value, _ in parsed]
        if not any(problem for _, problem in parsed):
            return table, values
        columns = {"status": table["status"].to_pylist(),
                   "error_code": table["error_code"].to_pylist(),
                   "error_message": table["error_message"].to_pylist()}  # fmt: skip
        for row, (_, problem) in enumerate(parsed):
            if problem is not None:
                columns["status"][row] = INVALID_OUTPUT
                columns["error_code"][row] = f"{INVALID_OUTPUT}:{problem.kind}"
                columns["error_message"][row] = str(problem)
        for name, column in columns.items():
            position = table.schema.get_field_index(name)
            table = table.set_column(
                position, name, pa.array(column, table.schema.field(position).type)
            )
        return table, values

    # columns

    def column_types(self) -> dict[str, Any]:
        """The typed columns the answers become, with their pandas dtypes.

        Returns:
            Column name -> dtype (``object`` where no narrower type fits).

        Example:
            >>> out = StructuredOutput({"type": "object", "properties": {
            ...     "n": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}},
            ...     "who": {"type": "object", "properties": {"name": {"type": "string"}}}}})
            >>> {name: str(dtype) for name, dtype in out.column_types().items()}
            {'n': 'Int64', 'tags': 'list<item: string>[pyarrow]', 'who__name': 'string'}
        """
        return {name: dtype for name, (_, dtype) in self._columns().items()}

    def _columns(self) -> dict[str, tuple[tuple[str, ...], Any]]:
        """Column name -> (path of keys in the answer, dtype)."""
        out: dict[str, tuple[tuple[str, ...], Any]] = {}
        self._flatten(self.schema, (), out)
        return out

    def _flatten(self, schema: dict[str, Any], path: tuple[str, ...], out: dict[str, Any]) -> None:
        for key, node in (schema.get("properties") or {}).items():
            resolved = _non_null(self._resolve(node), self._resolve)
            if _is_nested_object(resolved):
                self._flatten(resolved, (*path, key), out)
            else:
                out[NESTED_SEPARATOR.join((*path, key))] = ((*path, key), self._dtype(resolved))

    def _resolve(self, node: Any) -> Any:
        """``node`` with a local ``$ref`` replaced by its target (other keys kept)."""
        seen = 0
        while isinstance(node, dict) and isinstance(node.get("$ref"), str) and seen < 32:
            target: Any = self.schema
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target.get(part, {}) if isinstance(target, dict) and part else target
            node = {**{k: v for k, v in node.items() if k != "$ref"}, **target}
            seen += 1
        return node

    def _dtype(self, node: Any) -> Any:
        enum = _enum_values(node)
        if enum is not None:
            return pd.CategoricalDtype(enum) if all(isinstance(v, str) for v in enum) else object
        scalar = {"string": pd.StringDtype(), "integer": pd.Int64Dtype(),
                  "number": pd.Float64Dtype(), "boolean": pd.BooleanDtype()}  # fmt: skip
        kind = node.get("type") if isinstance(node, dict) else None
        if kind in scalar:
            return scalar[kind]
        if kind == "array":
            item = self._arrow_type(node.get("items"))
            return pd.ArrowDtype(pa.list_(item)) if item is not None else object
        return object

    def _arrow_type(self, node: Any, depth: int = 0) -> pa.DataType | None:
        """The Arrow type of a list's items, or None when they have no single type."""
        node = _non_null(self._resolve(node), self._resolve)
        if not isinstance(node, dict) or depth > 8:
            return None
        enum = _enum_values(node)
        if enum is not None:
            return pa.string() if all(isinstance(v, str) for v in enum) else None
        kind = node.get("type")
        scalar = {"string": pa.string(), "integer": pa.int64(), "number": pa.float64(),
                  "boolean": pa.bool_()}  # fmt: skip
        if kind in scalar:
            return scalar[kind]
        if kind == "array":
            item = self._arrow_type(node.get("items"), depth + 1)
            return pa.list_(item) if item is not None else None
        if _is_nested_object(node):
            fields = [(k, self._arrow_type(v, depth + 1)) for k, v in node["properties"].items()]
            if all(t is not None for _, t in fields):
                return pa.struct(fields)
        return None

    def add_columns(
        self, frame: pd.DataFrame, values: Sequence[dict[str, Any] | None] | None = None
    ) -> pd.DataFrame:
        """Add one typed column per field of the valid answers (see the module doc).

        Rows that are not ``succeeded`` get nulls.

        Args:
            frame: Joined results (``status`` and ``content`` columns).
            values: Each row's valid answer, already parsed (by :meth:`mark_invalid`);
                None parses ``content`` here.

        Returns:
            ``frame`` with the typed columns appended.

        Raises:
            ValueError: A field's column clashes with a column of ``frame`` (naming it).

        Example:
            >>> out = StructuredOutput({"type": "object", "properties": {
            ...     "mood": {"enum": ["happy", "sad"]}, "score": {"type": "number"}}})
            >>> frame = pd.DataFrame({"status": ["succeeded", "failed"],
            ...                       "content": ['{"mood": "sad", "score": 0.5}', None]})
            >>> typed = out.add_columns(frame)
            >>> typed["mood"].tolist(), str(typed["mood"].dtype), str(typed["score"].dtype)
            (['sad', nan], 'category', 'Float64')
        """
        columns = self._columns()
        clashes = sorted(set(columns) & set(frame.columns))
        if clashes:
            raise ValueError(
                f"response_model fields clash with result columns: {clashes}; rename them"
            )
        if values is None:
            values = [
                self.parse(content)[0] if status == "succeeded" else None
                for status, content in zip(frame["status"], frame["content"], strict=True)
            ]
        typed = {
            name: _series([_pick(v, path) for v in values], dtype, frame.index)
            for name, (path, dtype) in columns.items()
        }
        return pd.concat([frame, pd.DataFrame(typed, index=frame.index)], axis=1)


class _NotStrict(Exception):
    """The schema has a part strict structured outputs cannot express."""


def _strict(node: Any) -> Any:
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {k: _strict(v) for k, v in node.items() if k != "default"}
    if node.get("type") == "object" or "properties" in node:
        if "properties" not in node or node.get("additionalProperties") not in (None, False):
            raise _NotStrict  # a free-form object or map
        properties = node.get("properties") or {}
        node["properties"] = properties
        node["required"] = list(properties)
        node["additionalProperties"] = False
    return node


def _non_null(node: Any, resolve: Any) -> Any:
    """``X`` of an ``anyOf: [X, null]`` (an optional field), resolved; else ``node``."""
    if isinstance(node, dict):
        options = node.get("anyOf") or node.get("oneOf")
        if isinstance(options, list):
            rest = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            if len(rest) == 1 and len(rest) < len(options):
                return resolve(rest[0])
        kind = node.get("type")
        if isinstance(kind, list) and "null" in kind and len(kind) == 2:
            return {**node, "type": next(k for k in kind if k != "null")}
    return node


def _enum_values(node: Any) -> list[Any] | None:
    if not isinstance(node, dict):
        return None
    if "const" in node:
        return [node["const"]]
    enum = node.get("enum")
    return [v for v in enum if v is not None] if isinstance(enum, list) else None


def _is_nested_object(node: Any) -> bool:
    """An object with listed properties and no others: flattened into columns."""
    return (
        isinstance(node, dict)
        and node.get("type", "object") == "object"
        and isinstance(node.get("properties"), dict)
        and bool(node["properties"])
        and node.get("additionalProperties") in (None, False)
        and _enum_values(node) is None
    )


def _pick(value: Any, path: Sequence[str]) -> Any:
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _series(values: list[Any], dtype: Any, index: pd.Index) -> pd.Series:
    if isinstance(dtype, pd.ArrowDtype):
        try:
            array = pa.array(values, dtype.pyarrow_dtype)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return pd.Series(values, index=index, dtype=object)
        return pd.Series(pd.arrays.ArrowExtensionArray(array), index=index)
    if isinstance(dtype, pd.CategoricalDtype):
        return pd.Series(pd.Categorical(values, dtype=dtype), index=index)
    if dtype is object:
        return pd.Series(values, index=index, dtype=object)
    try:
        return pd.Series(pd.array(values, dtype=dtype), index=index)
    except (TypeError, ValueError):
        return pd.Series(values, index=index, dtype=object)


def _json_path(loc: Sequence[Any]) -> str:
    """``$.a[0].b`` from a Pydantic error location."""
    path = "$"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _error_order(error: Any) -> tuple[int, str]:
    """Errors nearer the root first, then by path, so the first problem is stable."""
    return (len(error.instance_path), _json_path(error.instance_path))


def structured_output(response_model: ResponseModel | None) -> StructuredOutput | None:
    """``StructuredOutput(response_model)``, None for None, a ``StructuredOutput`` as is.

    Example:
        >>> structured_output(None) is None
        True
    """
    if response_model is None or isinstance(response_model, StructuredOutput):
        return response_model
    return StructuredOutput(response_model)


def invalid_output_counts(frame: pd.DataFrame) -> dict[str, int]:
    """How many rows are ``invalid_output``, by error: ``<JSON path>: <kind>`` (the
    messages themselves quote values, so they are not grouped on).

    Args:
        frame: A results table, or some of its rows (counts of several add up).

    Returns:
        Error -> rows, every error.

    Example:
        >>> invalid_output_counts(pd.DataFrame({"status": ["invalid_output", "succeeded"],
        ...     "error_code": ["invalid_output:missing", None],
        ...     "error_message": ["$.a: Field required", None]}))
        {'$.a: missing': 1}
    """
    invalid = frame[frame["status"] == INVALID_OUTPUT]
    if invalid.empty:
        return {}
    paths = invalid["error_message"].fillna("$").astype(str).str.split(": ", n=1).str[0]
    kinds = invalid["error_code"].fillna("").astype(str).str.removeprefix(f"{INVALID_OUTPUT}:")
    return {str(k): int(v) for k, v in (paths + ": " + kinds).value_counts().items()}


def invalid_output_summary(
    results: pd.DataFrame | Mapping[str, int], limit: int = 20
) -> dict[str, int]:
    """The most frequent ``invalid_output`` errors (``invalid_output_counts``), the rest
    counted under ``(other)``.

    Args:
        results: A results table, or its ``invalid_output_counts``.
        limit: The most distinct errors listed.

    Returns:
        Error -> rows, the most frequent first.

    Example:
        >>> invalid_output_summary(pd.DataFrame({"status": ["invalid_output"] * 2,
        ...     "error_code": ["invalid_output:missing"] * 2,
        ...     "error_message": ["$.a: Field required"] * 2}))
        {'$.a: missing': 2}
        >>> invalid_output_summary({"$.a: missing": 1, "$.b: type": 3}, limit=1)
        {'$.b: type': 3, '(other)': 1}
    """
    counts = invalid_output_counts(results) if isinstance(results, pd.DataFrame) else results
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    summary = dict(ranked[:limit])
    if len(ranked) > limit:
        summary["(other)"] = sum(n for _, n in ranked[limit:])
    return summary


def request_params(
    structured: StructuredOutput, profile: ProviderProfile, endpoint: str
) -> tuple[dict[str, Any], str | None]:
    """The body fields that ask for structured output, and the system text to add.

    Args:
        structured: What to answer.
        profile: The provider's profile.
        endpoint: ``/v1/chat/completions`` or ``/v1/responses``.

    Returns:
        ``({"response_format": ...}, None)`` on chat, ``({"text": ...}, None)`` on
        Responses; with a ``json_object`` profile the second item is the instruction
        carrying the schema, for a system message (chat) or ``instructions`` (Responses).

    Raises:
        ValueError: Another endpoint (completions, embeddings take no response format).

    Example:
        >>> from dagster_inference_batch.providers import provider_profile
        >>> out = StructuredOutput({"type": "object", "title": "T", "properties": {}})
        >>> params, text = request_params(out, provider_profile("openai"), "/v1/responses")
        >>> list(params), text
        (['text'], None)
    """
    if endpoint == "/v1/chat/completions":
        params = {"response_format": structured.response_format(profile)}
    elif endpoint == "/v1/responses":
        params = {"text": structured.text_format(profile)}
    else:
        raise ValueError(
            f"response_model needs the chat or Responses endpoint; the endpoint is {endpoint!r}"
        )
    json_object = profile.structured_output == "json_object"
    return params, structured.instruction() if json_object else None


DEFAULT_RETRY_PROMPT_SUFFIX = (
    "Your previous answer did not match the required JSON schema. Answer with only a JSON "
    "object that is valid against it: every required field, the exact types, and only the "
    "allowed values."
)


def with_prompt_suffix(line: dict[str, Any], suffix: str) -> dict[str, Any]:
    """A request line whose prompt ends with ``suffix`` (the retry of an invalid answer).

    The last user message of a chat body (or of a Responses ``input`` list) gets it
    after a blank line; a Responses ``input`` string likewise; a body with no user text
    gets it as a new user message.

    Args:
        line: A request line (``custom_id``, ``body``, ...).
        suffix: The text to add.

    Returns:
        A new line; ``line`` is not changed.

    Example:
        >>> line = {"custom_id": "a", "body": {"messages": [{"role": "user", "content": "Hi"}]}}
        >>> with_prompt_suffix(line, "JSON only.")["body"]["messages"][-1]["content"]
        'Hi\\n\\nJSON only.'
    """
    body = orjson.loads(orjson.dumps(line.get("body") or {}))
    key = "messages" if "messages" in body else "input"
    value = body.get(key)
    if isinstance(value, str):
        body[key] = f"{value}\n\n{suffix}"
    elif isinstance(value, list):
        users = [m for m in value if isinstance(m, dict) and m.get("role", "user") == "user"]
        content = users[-1].get("content") if users else None
        if isinstance(content, str):
            users[-1]["content"] = f"{content}\n\n{suffix}"
        elif isinstance(content, list):
            kind = "input_text" if key == "input" else "text"
            content.append({"type": kind, "text": suffix})
        else:
            value.append({"role": "user", "content": suffix})
    else:
        body["messages"] = [{"role": "user", "content": suffix}]
    return {**line, "body": body}
