"""Build a deterministic JSON instance that is valid against a (practical) JSON schema."""

from __future__ import annotations

import math
import random
from typing import Any

_WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india")
_FORMATS = {
    "date": "2024-01-01",
    "date-time": "2024-01-01T00:00:00Z",
    "time": "00:00:00Z",
    "email": "user@example.com",
    "uri": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
}
# Past SHALLOW levels the instance gets as small as it can: required properties only,
# the fewest items, and a `null` (else the simplest) branch of anyOf/oneOf/type lists, so
# a recursive schema (a linked list, a tree) ends. A schema with no finite instance at all
# gives up at DEEPEST with null.
SHALLOW = 6
DEEPEST = 48
_COST = {"null": 0, "boolean": 1, "integer": 1, "number": 1, "string": 1, "array": 2}


def instance_for(schema: dict[str, Any], seed: str) -> Any:
    """A value valid against `schema`; the same schema and seed always give the same value."""
    return _Builder(schema, random.Random(seed)).build(schema, depth=0)


class _Builder:
    def __init__(self, root: dict[str, Any], rng: random.Random) -> None:
        self.root = root
        self.rng = rng

    def build(self, schema: Any, depth: int) -> Any:
        if not isinstance(schema, dict):
            return None if schema is False else "value"
        if depth > DEEPEST:
            return None
        schema = self._resolve(schema)
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return self.rng.choice(schema["enum"])
        for key in ("anyOf", "oneOf"):
            if schema.get(key):
                return self.build(self._branch(schema[key], depth), depth + 1)
        if schema.get("allOf"):
            merged: dict[str, Any] = {}
            for part in schema["allOf"]:
                merged = _merge(merged, self._resolve(part))
            return self.build(
                _merge(merged, {k: v for k, v in schema.items() if k != "allOf"}), depth + 1
            )
        kind = schema.get("type")
        if isinstance(kind, list):
            if depth >= SHALLOW:
                kind = min(kind, key=lambda k: _COST.get(k, 3), default="null")
            else:
                kind = next((k for k in kind if k != "null"), "null")
        if kind is None:
            kind = (
                "object" if "properties" in schema else "array" if "items" in schema else "string"
            )
        return getattr(self, f"_{kind}", self._string)(schema, depth)

    def _branch(self, options: list[Any], depth: int) -> Any:
        """The first non-null branch; deep down, the cheapest one (null first)."""
        if depth < SHALLOW:
            return next((o for o in options if self._kind(o) != "null"), options[0])
        return min(options, key=lambda o: _COST.get(self._kind(o), 3))

    def _kind(self, schema: Any) -> Any:
        if not isinstance(schema, dict):
            return None
        schema = self._resolve(schema)
        if "const" in schema or "enum" in schema:
            return "null" if schema.get("const", 0) is None else "string"
        kind = schema.get("type")
        return "null" if isinstance(kind, list) and "null" in kind else kind

    def _resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        seen = 0
        while "$ref" in schema and seen < 32:
            node: Any = self.root
            for part in schema["$ref"].lstrip("#/").split("/"):
                node = node.get(part.replace("~1", "/").replace("~0", "~"), {}) if part else node
            schema, seen = node, seen + 1
        return schema

    def _object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        props = schema.get("properties", {})
        required = schema.get("required", list(props))
        names = list(props) if depth < SHALLOW else [n for n in props if n in required]
        out = {name: self.build(props[name], depth + 1) for name in names}
        for name in required:
            out.setdefault(name, "value")
        return out

    def _array(self, schema: dict[str, Any], depth: int) -> list[Any]:
        low = schema.get("minItems", 0)
        high = schema.get("maxItems", max(low, 3))
        count = max(low, min(high, low + 2 if depth < SHALLOW else low))
        prefix = schema.get("prefixItems", [])
        items = [self.build(s, depth + 1) for s in prefix[:count]]
        item_schema = schema.get("items", {"type": "string"})
        while len(items) < count:
            value = self.build(item_schema, depth + 1)
            if schema.get("uniqueItems") and value in items:
                value = self._unique(item_schema, items, depth)
            items.append(value)
        return items

    def _unique(self, schema: Any, items: list[Any], depth: int) -> Any:
        for _ in range(20):
            value = self.build(schema, depth + 1)
            if value not in items:
                return value
        return f"{self.build(schema, depth + 1)}-{len(items)}"

    def _string(self, schema: dict[str, Any], depth: int) -> str:
        if schema.get("format") in _FORMATS:
            return _FORMATS[schema["format"]]
        low, high = schema.get("minLength", 0), schema.get("maxLength", 40)
        text = " ".join(self.rng.choice(_WORDS) for _ in range(3))
        while len(text) < low:
            text += " " + self.rng.choice(_WORDS)
        return text[: max(high, 0)]

    def _integer(self, schema: dict[str, Any], depth: int) -> int:
        return int(self._number({**schema, "multipleOf": schema.get("multipleOf", 1)}, depth))

    def _number(self, schema: dict[str, Any], depth: int) -> float:
        low, high = _bounds(schema)
        lo = low if low is not None else 0.0 if high is None or high >= 0 else high - 10
        hi = high if high is not None else lo + 100
        step = schema.get("multipleOf")
        if step:
            first = math.ceil(lo / step)
            return self.rng.randint(first, max(first, math.floor(hi / step))) * step
        return round(lo + (hi - lo) * (0.25 + 0.5 * self.rng.random()), 4)

    def _boolean(self, schema: dict[str, Any], depth: int) -> bool:
        return self.rng.random() < 0.5

    def _null(self, schema: dict[str, Any], depth: int) -> None:
        return None


def _bounds(schema: dict[str, Any]) -> tuple[float | None, float | None]:
    low, high = schema.get("minimum"), schema.get("maximum")
    if "exclusiveMinimum" in schema and not isinstance(schema["exclusiveMinimum"], bool):
        low = schema["exclusiveMinimum"] + 1e-6
    if "exclusiveMaximum" in schema and not isinstance(schema["exclusiveMaximum"], bool):
        high = schema["exclusiveMaximum"] - 1e-6
    return low, high


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = {**a, **b}
    if "properties" in a and "properties" in b:
        out["properties"] = {**a["properties"], **b["properties"]}
    if "required" in a and "required" in b:
        out["required"] = list(dict.fromkeys([*a["required"], *b["required"]]))
    return out
