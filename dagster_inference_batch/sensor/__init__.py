"""The ``<name>_sensor``: watch in-flight batches, resubmit leftovers, request results.

A tick reads, works, then plans, each in its own module:

- ``gather``: the I/O. Read the uncollected jobs from the event log and which of their
  partitions still exist; refresh the jobs in flight concurrently within a time budget
  (resubmitting an expired or cancelled remainder while attempts remain), cancel the
  batches of a partition that no longer exists; look up the results runs already made.
- ``tick``, ``plan``, ``results_runs``, ``summary``: the pure planning. From what was
  read and done (a ``TickState``), the asset events, the run requests, the next cursor
  and the skip reason (a ``TickPlan``).
- ``cursor``: ``SensorCursor``, what the sensor remembers between ticks.
- ``definition``: ``build_sensor``, the thin ``@dg.sensor`` that executes the plan.

The event log is the source of truth: losing the cursor costs a repeated observation,
never a duplicate run (Dagster drops a repeated ``run_key``, and the runs already made
for a state are found by their ``inference_batch/results_for`` tag) nor a second cancel.
"""

from ..spec import (
    DEFAULT_BUDGET_SECONDS,
    DEFAULT_PROGRESS_STEP_PERCENT,
    DEFAULT_PROGRESS_STEP_SECONDS,
)
from .cursor import SensorCursor
from .definition import build_sensor
from .gather import abandon, advance, find_results_runs, gather_tick, partitions_gone
from .plan import plan_tick, progress_due
from .results_runs import (
    LONG_RUN_SECONDS,
    MAX_RESULTS_RETRIES,
    RESULTS_FOR_TAG,
    STATUS_TAG,
    ResultsDecision,
    ResultsRun,
    decide_results,
    results_for,
)
from .tick import (
    Abandoned,
    Refreshed,
    SensorSettings,
    TickPlan,
    TickState,
    TickWork,
    plan_work,
    runs_wanted,
)

__all__ = [
    "DEFAULT_BUDGET_SECONDS",
    "DEFAULT_PROGRESS_STEP_PERCENT",
    "DEFAULT_PROGRESS_STEP_SECONDS",
    "LONG_RUN_SECONDS",
    "MAX_RESULTS_RETRIES",
    "RESULTS_FOR_TAG",
    "STATUS_TAG",
    "Abandoned",
    "Refreshed",
    "ResultsDecision",
    "ResultsRun",
    "SensorCursor",
    "SensorSettings",
    "TickPlan",
    "TickState",
    "TickWork",
    "abandon",
    "advance",
    "build_sensor",
    "decide_results",
    "find_results_runs",
    "gather_tick",
    "partitions_gone",
    "plan_tick",
    "plan_work",
    "progress_due",
    "results_for",
    "runs_wanted",
]
