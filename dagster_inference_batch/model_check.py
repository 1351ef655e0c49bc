"""The model check: every model the lines name must be one the provider lists.

Where the provider offers ``GET /models``, an unknown model is refused before anything
is uploaded, naming the closest ids it does list. The list is read once per client;
where the endpoint is missing (404, 405, 501) the check is skipped with one log line.
"""

from __future__ import annotations

import difflib
import threading
from collections.abc import Iterable

from .errors import BatchAPIError, InvalidBatchInput
from .provider_calls import ProviderCalls

MODEL_LISTING = "GET /models"
ABSENT = (404, 405, 501)


class ModelCheck:
    """One client's model check, with the provider's model list cached.

    Args:
        provider: The client's calls.
        provider_name: The provider's profile name, for messages.
    """

    def __init__(self, provider: ProviderCalls, provider_name: str) -> None:
        self._provider = provider
        self._name = provider_name
        self._lock = threading.Lock()
        self._known: frozenset[str] | None = None
        self._fetched = False

    def known_models(self) -> frozenset[str] | None:
        """The provider's model ids, read once; None when it offers no model list.

        Raises:
            BatchAPIError: The list could not be read for another reason.
        """
        with self._lock:
            if not self._fetched:
                self._known = self._fetch()
                self._fetched = True
            return self._known

    def unknown(self, models: Iterable[str]) -> list[str]:
        """The models the provider does not list (none when it offers no list).

        Args:
            models: Model ids.

        Returns:
            The unknown ones, sorted.
        """
        known = self.known_models()
        if known is None:
            return []
        return sorted({m for m in models if m and m not in known})

    def check(self, models: Iterable[str]) -> None:
        """Refuse the lines if a model is unknown to the provider.

        Args:
            models: Each line's ``body.model``.

        Raises:
            InvalidBatchInput: Naming each unknown model and the closest listed ids.
            BatchAPIError: The model list could not be read.
        """
        unknown = self.unknown(models)
        if not unknown:
            return
        known = sorted(self.known_models() or ())
        problems = []
        for model in unknown:
            close = difflib.get_close_matches(model, known, n=3, cutoff=0.5)
            hint = f"; closest: {close}" if close else f"; it lists {len(known)} models"
            problems.append(
                f"model {model!r} is not offered by provider {self._name!r} "
                f"({self._provider.base_url}){hint}"
            )
        raise InvalidBatchInput(problems)

    def _fetch(self) -> frozenset[str] | None:
        provider = self._provider
        try:
            page = provider.call(MODEL_LISTING, lambda: provider.sdk.models.list())
        except BatchAPIError as error:
            if error.status_code not in ABSENT:
                raise
            provider.log.info(
                "%s offers no %s (HTTP %s): the model check is skipped",
                provider.base_url,
                MODEL_LISTING,
                error.status_code,
            )
            return None
        return frozenset(model.id for model in page.data)
