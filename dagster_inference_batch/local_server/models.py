"""``GET /v1/models``: the models the server offers, and the per-line 404 for any other one
once a ``--profile`` is set (a real provider's answer to a model it does not serve).

The built-in list holds model ids from Inference.net's docs and a few OpenAI ones (see
`BUILTIN_MODELS`); ``--model ID`` adds more. Without a profile the server stays permissive
(it answers any model) and also lists the placeholder ids the tests and examples use.

Example:
    >>> catalog = ModelCatalog(extra=["my-org/my-model"], profile="inference.net")
    >>> "meta-llama/llama-3.1-8b-instruct/fp-8" in catalog, "my-org/my-model" in catalog
    (True, True)
    >>> "m" in catalog, "m" in ModelCatalog(extra=[], profile=None)
    (False, True)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .objects import APIError
from .responders import Reply, Responder, error_body

# Inference.net ids. Sources: docs.inference.net/reference/file-formats (batch line example,
# llama-3.2-3b-instruct/fp-16), docs.inference.net/features/embeddings
# (qwen/qwen3-embedding-4b), and the Inference.net catalog as listed by Lava's gateway docs
# (lava-a04d7b3f.mintlify.dev/docs/gateway/providers/inference) for the other chat ids.
INFERENCE_NET_MODELS = (
    "meta-llama/llama-3.1-8b-instruct/fp-8",
    "meta-llama/llama-3.1-8b-instruct/fp-16",
    "meta-llama/llama-3.2-1b-instruct/fp-16",
    "meta-llama/llama-3.2-3b-instruct/fp-16",
    "meta-llama/llama-3.2-11b-instruct/fp-16",
    "meta-llama/llama-3.1-70b-instruct/fp-16",
    "meta-llama/llama-3.3-70b-instruct/fp-16",
    "mistralai/mistral-nemo-12b-instruct/fp-8",
    "google/gemma-3-27b-instruct/bf-16",
    "qwen/qwen2.5-7b-instruct/bf-16",
    "deepseek/deepseek-r1/fp-8",
    "deepseek/deepseek-v3-0324/fp-8",
    "qwen/qwen3-embedding-4b",
)
# OpenAI ids for ``--profile openai`` (platform.openai.com/docs/models).
OPENAI_MODELS = (
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1-mini",
    "text-embedding-3-small",
    "text-embedding-3-large",
    "omni-moderation-latest",
)
# Placeholders used by the tests, examples and bench; listed only without a profile.
PLACEHOLDER_MODELS = ("m", "test-model", "demo-model", "local-model")
BUILTIN_MODELS = {
    **dict.fromkeys(INFERENCE_NET_MODELS, "inference.net"),
    **dict.fromkeys(OPENAI_MODELS, "openai"),
}
CREATED = 1_735_689_600  # 2025-01-01: a fixed `created` for the built-in ids


class ModelCatalog:
    """The model ids ``/v1/models`` lists.

    Args:
        extra: Ids added with ``--model``.
        profile: The provider played, or None (then the placeholder ids are listed too).
    """

    def __init__(self, extra: Iterable[str], profile: str | None) -> None:
        owners = dict(BUILTIN_MODELS)
        if profile is None:
            owners |= dict.fromkeys(PLACEHOLDER_MODELS, "local")
        owners |= {model: owners.get(model, "local") for model in extra}
        self._owners = owners

    def __contains__(self, model: object) -> bool:
        return model in self._owners

    def list_body(self) -> dict[str, Any]:
        """The ``GET /v1/models`` body.

        Returns:
            ``{"object": "list", "data": [Model, ...]}``.
        """
        return {"object": "list", "data": [self.model_body(m) for m in self._owners]}

    def model_body(self, model: str) -> dict[str, Any]:
        """The ``GET /v1/models/{model}`` body.

        Args:
            model: A model id.

        Returns:
            ``{"id", "object": "model", "created", "owned_by"}``.

        Raises:
            APIError: 404 ``model_not_found``: the id is not listed.
        """
        if model not in self._owners:
            raise APIError(404, model_not_found_message(model), code="model_not_found")
        return {"id": model, "object": "model", "created": CREATED, "owned_by": self._owners[model]}


def model_not_found_message(model: str) -> str:
    """OpenAI's wording for a model it does not serve.

    Args:
        model: The id asked for.

    Returns:
        The message.
    """
    return f"The model `{model}` does not exist or you do not have access to it."


class ModelCheckingResponder:
    """A responder that answers 404 ``model_not_found`` for a body naming an unlisted model,
    and hands the other bodies to `inner`.

    Args:
        inner: The responder answering the listed models.
        catalog: The listed models.
    """

    def __init__(self, inner: Responder, catalog: ModelCatalog) -> None:
        self.inner = inner
        self.catalog = catalog
        self.chunk_size = inner.chunk_size

    def respond_many(self, endpoint: str, bodies: list[dict[str, Any]]) -> list[Reply]:
        """Answer `bodies`, unknown models with a 404 each.

        Args:
            endpoint: The batch's endpoint.
            bodies: The request bodies.

        Returns:
            One reply per body, in order.
        """
        replies: list[Reply | None] = [None] * len(bodies)
        known = []
        for i, body in enumerate(bodies):
            model = body.get("model")
            if model in self.catalog:
                known.append(i)
            else:
                message = model_not_found_message(str(model))
                replies[i] = Reply(404, error_body(404, message, "model_not_found"))
        answers = self.inner.respond_many(endpoint, [bodies[i] for i in known])
        for i, answer in zip(known, answers, strict=True):
            replies[i] = answer
        return [reply for reply in replies if reply is not None]
