"""What the results metadata and checks need from a results table, added up chunk by chunk.

A ``ResultsTally`` holds counts, not rows: statuses, tokens, error codes with one example
message each, ``invalid_output`` errors, the schema and the first rows.

The in-memory mode summarizes its one DataFrame; the streaming mode (``results_stream``)
adds each chunk as it is written, so metadata and checks never need the whole table.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pandas as pd

from .result_bodies import embedding_dimension
from .results import STATUSES
from .results_summary import add_error_counts, error_counts
from .structured_output import invalid_output_counts

PREVIEW_ROWS = 10
_TOKENS = ("input_tokens", "output_tokens", "total_tokens")


def token_usage(frame: pd.DataFrame) -> dict[str, int]:
    """Token totals over the results, keyed like the Batch API's usage object.

    Args:
        frame: the results table (``prompt_tokens`` and ``completion_tokens`` columns).

    Returns:
        ``input_tokens``, ``output_tokens`` and ``total_tokens``.

    Example:
        >>> token_usage(pd.DataFrame({"prompt_tokens": [3, None], "completion_tokens": [2, 1]}))
        {'input_tokens': 3, 'output_tokens': 3, 'total_tokens': 6}
    """
    prompt = int(frame["prompt_tokens"].fillna(0).sum())
    completion = int(frame["completion_tokens"].fillna(0).sum())
    return {
        "input_tokens": prompt,
        "output_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _add(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {key: a.get(key, 0) + b.get(key, 0) for key in {*a, *b}}


@dataclass(frozen=True)
class ResultsTally:
    """Counts, tokens, schema and first rows of a results table.

    Args:
        rows: Rows in the table.
        distinct_ids: Distinct ``custom_id`` values.
        statuses: Rows per status (every one of ``STATUSES``).
        tokens: ``token_usage`` of every row.
        batch_tokens: ``token_usage`` of the rows a batch answered (``source`` batch).
        store_rows: Rows answered from the answer store (``source`` store).
        store_tokens: ``token_usage`` of those rows.
        dtypes: ``(column, pandas dtype)`` of the table, in order.
        head: The first ``PREVIEW_ROWS`` rows.
        embedding_dimension: The vectors' length (embeddings batches), else None.
        errors: ``error_counts`` of the rows not succeeded (the markdown summary's top
            error codes).
        invalid: ``invalid_output_counts``: rows per ``<JSON path>: <kind>``.

    Example:
        >>> frame = pd.DataFrame({"custom_id": ["a", "b"], "status": ["succeeded", "failed"],
        ...     "prompt_tokens": [3, None], "completion_tokens": [2, None],
        ...     "error_code": [None, "server_error"], "error_message": [None, "boom"]})
        >>> tally = ResultsTally.of(frame[:1]).plus(frame[1:])
        >>> tally.rows, tally.statuses["failed"], tally.tokens["total_tokens"], tally.errors
        (2, 1, 5, {'server_error': (1, 'boom')})
    """

    rows: int = 0
    distinct_ids: int = 0
    statuses: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_TOKENS, 0))
    batch_tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_TOKENS, 0))
    store_rows: int = 0
    store_tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_TOKENS, 0))
    dtypes: tuple[tuple[str, str], ...] = ()
    head: pd.DataFrame | None = None
    embedding_dimension: int | None = None
    errors: dict[str, tuple[int, str]] = field(default_factory=dict)
    invalid: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, frame: pd.DataFrame) -> ResultsTally:
        """The summary of one whole table.

        Args:
            frame: A results table.

        Returns:
            Its summary; ``distinct_ids`` counted over the table.
        """
        return cls().plus(frame, distinct_ids=int(frame["custom_id"].astype(str).nunique()))

    def plus(self, frame: pd.DataFrame, distinct_ids: int | None = None) -> ResultsTally:
        """This summary with the rows of ``frame`` added after the ones it holds.

        Args:
            frame: More rows of the same table.
            distinct_ids: Distinct ids the rows add (default: rows of ``frame``, which the
                streaming mode writes once each).

        Returns:
            The new summary.
        """
        counts = frame["status"].value_counts()
        source = frame["source"] if "source" in frame.columns else None
        stored = frame[source == "store"] if source is not None else frame.iloc[:0]
        from_batches = frame[source == "batch"] if source is not None else frame
        head = frame.head(PREVIEW_ROWS)
        if self.head is not None:
            head = pd.concat([self.head, head], ignore_index=True).head(PREVIEW_ROWS)
        return replace(
            self,
            rows=self.rows + len(frame),
            distinct_ids=self.distinct_ids + (len(frame) if distinct_ids is None else distinct_ids),
            statuses={s: n + int(counts.get(s, 0)) for s, n in self.statuses.items()},
            tokens=_add(self.tokens, token_usage(frame)),
            batch_tokens=_add(self.batch_tokens, token_usage(from_batches)),
            store_rows=self.store_rows + len(stored),
            store_tokens=_add(self.store_tokens, token_usage(stored)),
            dtypes=self.dtypes or tuple((str(c), str(t)) for c, t in frame.dtypes.items()),
            head=head,
            embedding_dimension=self.embedding_dimension
            if self.embedding_dimension is not None
            else embedding_dimension(frame),
            errors=add_error_counts(self.errors, error_counts(frame)),
            invalid=_add(self.invalid, invalid_output_counts(frame)),
        )
