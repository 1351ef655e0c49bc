"""The background worker: moves batches through their lifecycle and writes result files.

Requests are answered in chunks, in a shuffled order fixed by the seed and the batch id.
After each chunk the result lines are appended to the partial output/error files and the
progress (requests done, file sizes, counts, usage) is committed to SQLite in one
transaction. A restart truncates the partial files to the committed sizes and goes on, so a
killed server loses nothing and writes nothing twice.
"""

from __future__ import annotations

import logging
import mmap
import random
import threading
import time
import zlib
from typing import Any

import orjson

from .config import ServerConfig
from .invalid_outputs import break_answer
from .provider_rules import ServerRules
from .responders import Reply, Responder, error_body
from .run_files import ChunkResults, RunFiles, close_input, map_input
from .store import Store, new_id, truncate
from .validation import Span, check_input, request_spans
from .webhooks import batch_event, deliver

log = logging.getLogger(__name__)

ACTIVE_STATUSES = ("validating", "in_progress", "finalizing", "cancelling")

IDLE_SECONDS = 0.02
MAX_STEP_FAILURES = 3  # consecutive failed steps of one batch before it ends `failed`
RETRY_BASE_SECONDS = 0.2  # backoff after a failed step: 0.2 s, 0.4 s, ...
_FAILURES = (
    (400, "invalid_value", "The request was rejected (simulated failure)."),
    (429, "rate_limit_exceeded", "Rate limit reached (simulated failure)."),
    (500, "server_error", "The model failed to answer (simulated failure)."),
)


class Worker:
    """Runs in a thread of the server process; picks up every unfinished batch at start.

    Args:
        store: The server's SQLite state and files.
        config: The server's options (speeds, failure rate, seed, limits).
        responder: What answers each request.

    Attributes:
        wake: Set it to make the worker look at the batches now (an API call changed one).
    """

    def __init__(self, store: Store, config: ServerConfig, responder: Responder) -> None:
        self.store = store
        self.config = config
        self.responder = responder
        self.rules = ServerRules.from_config(config)
        self.wake = threading.Event()
        self._stopping = threading.Event()
        self._runs: dict[str, RunFiles] = {}
        self._failures: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}
        self._thread = threading.Thread(target=self._loop, name="batch-worker", daemon=True)

    def start(self) -> None:
        """Send the webhooks left pending by the last run, then start the thread."""
        for row in self.store.pending_webhooks():
            self._notify(row["id"], row["webhook_url"], row["status"])
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (waiting up to 30 s for the current step) and close open runs."""
        self._stopping.set()
        self.wake.set()
        self._thread.join(timeout=30)
        for run in self._runs.values():
            run.close()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            busy = False
            for row in self.store.active_batches():
                if self._retry_at.get(row["id"], 0.0) > time.monotonic():
                    continue
                try:
                    busy |= self._advance(row)
                except FileNotFoundError:
                    self._drop_run(row["id"])
                    self._fail(row, [_error("file_not_found", "The input file was deleted.")])
                except Exception as exc:
                    self._step_failed(row, exc)
                else:
                    self._failures.pop(row["id"], None)
                if self._stopping.is_set():
                    return
            if not busy:
                self.wake.wait(IDLE_SECONDS)
                self.wake.clear()

    def _step_failed(self, row: dict[str, Any], exc: Exception) -> None:
        """Retry a failed step with backoff; after a few in a row, the batch ends `failed`."""
        batch_id = row["id"]
        self._drop_run(batch_id)  # reopening cuts the partial files back to the committed sizes
        count = self._failures[batch_id] = self._failures.get(batch_id, 0) + 1
        delay = RETRY_BASE_SECONDS * 2 ** (count - 1)
        self._retry_at[batch_id] = time.monotonic() + delay
        if count < MAX_STEP_FAILURES:
            log.warning(
                "batch %s: worker step failed (%s: %s); retry %d in %.1f s",
                *(batch_id, type(exc).__name__, exc, count, delay),
                exc_info=count == 1,
            )
            return
        log.error("batch %s: worker step failed %d times in a row; failing it", batch_id, count)
        message = f"The server failed to process the batch ({type(exc).__name__}: {exc})."
        try:
            self._fail(row, [_error("server_error", message[:1000])], expect=ACTIVE_STATUSES)
        except Exception:
            log.exception("batch %s: could not mark it failed", batch_id)
            return
        self._failures.pop(batch_id, None)
        self._retry_at.pop(batch_id, None)

    def _advance(self, row: dict[str, Any]) -> bool:
        """One step for one batch; True when it did work."""
        now, status = time.time(), row["status"]
        limit = self.config.expire_after_requests
        past_window = now >= row["expires_ts"] and not self.config.overrun_window
        if status in ("validating", "in_progress") and past_window:
            self._finish(row, "expired", "batch_expired")
        elif status == "in_progress" and limit is not None and row["total"] > row["done"] >= limit:
            self._finish(row, "expired", "batch_expired")
        elif status == "validating" and now >= row["phase_ts"] + self.config.validating_seconds:
            self._validate(row)
        elif status == "in_progress":
            return self._process(row, now)
        elif status == "finalizing" and now >= row["phase_ts"] + self.config.finalizing_seconds:
            self._finish(row, "completed", None)
        elif status == "cancelling" and now >= row["phase_ts"] + self.config.finalizing_seconds:
            self._finish(row, "cancelled", "batch_cancelled")
        else:
            return False
        return True

    # phases

    def _validate(self, row: dict[str, Any]) -> None:
        now = time.time()
        self._begin_run(row, status="in_progress", in_progress_at=int(now), phase_ts=now)

    def _begin_run(self, row: dict[str, Any], **fields: Any) -> dict[str, Any] | None:
        """Check the input file and open a run over its requests, moving the batch on with
        ``fields``; an invalid file fails the batch instead. Returns the updated row."""
        buffer = map_input(self.store.file_path(row["input_file_id"]).open("rb"))
        check = check_input(
            buffer,
            endpoint=row["endpoint"],
            max_requests=self.rules.max_requests,
            max_bytes=self.rules.max_bytes,
            max_embedding_inputs=self.rules.max_embedding_inputs,
        )
        if check.errors:
            close_input(buffer)
            self._fail(row, check.errors)
            return None
        fields |= {
            "total": len(check.spans),
            "model": check.model,
            "partial_output_id": new_id("file-"),
            "partial_error_id": new_id("file-"),
        }
        with self.store.transaction() as db:
            updated = self.store.update_batch(db, row["id"], expect=(row["status"],), **fields)
        if not updated:
            close_input(buffer)
            return None
        row = {**row, **fields}
        self._runs[row["id"]] = self._open_run(row, buffer, check.spans)
        return row

    def _process(self, row: dict[str, Any], now: float) -> bool:
        run = self._run(row)
        remaining = row["total"] - row["done"]
        count = min(remaining, self.responder.chunk_size)
        if self.config.expire_after_requests is not None:
            count = min(count, max(0, self.config.expire_after_requests - row["done"]))
        rate = self.config.requests_per_second
        if rate:
            run.credit = min(run.credit + (now - (run.last_tick or now)) * rate, rate + 1)
            run.last_tick = now
            count = min(count, int(run.credit))
            run.credit -= count
        if count <= 0 and remaining > 0:
            return False
        tally = self._answer(row, run, run.order[row["done"] : row["done"] + count])
        done = row["done"] + count
        with self.store.transaction() as db:
            self._commit_progress(db, row, run, done, tally)
            if done >= row["total"]:
                now = time.time()
                self.store.update_batch(
                    db,
                    row["id"],
                    expect=("in_progress",),
                    status="finalizing",
                    finalizing_at=int(now),
                    phase_ts=now,
                )
        return True

    def _finish(self, row: dict[str, Any], status: str, leftover_code: str | None) -> None:
        """Move to a final status; unanswered requests go to the error file with `leftover_code`.

        The leftover lines are parsed and written before the write transaction, which only
        commits the sizes and the status (a crash in between: the restart cuts them off)."""
        if leftover_code and not row["partial_output_id"]:
            started = self._start_unprocessed(row)
            if started is None:
                return
            row = started
        run = self._run(row) if row["partial_output_id"] else None
        tally = ChunkResults()
        if run is not None and leftover_code:
            tally = self._leftovers(row, run, leftover_code)
        now = time.time()
        fields: dict[str, Any] = {"status": status, f"{status}_at": int(now)}
        if row["webhook_url"]:
            fields["webhook_pending"] = 1
        try:
            with self.store.transaction() as db:
                if run is not None:
                    self._commit_progress(db, row, run, row["total"], tally)
                    for kind, file_id, stream in (
                        ("output", row["partial_output_id"], run.output),
                        ("error", row["partial_error_id"], run.errors),
                    ):
                        if stream.tell():
                            name = f"{row['id']}_{kind}.jsonl"
                            self.store.add_file(db, file_id, stream.tell(), name, "batch_output")
                            fields[f"{kind}_file_id"] = file_id
                if not self.store.update_batch(db, row["id"], expect=(row["status"],), **fields):
                    raise _StatusChanged
        except _StatusChanged:
            # e.g. cancelled while expiring: reopening cuts off the uncommitted leftovers
            self._drop_run(row["id"])
            return
        self._drop_run(row["id"])
        self._discard_empty_partials(row)
        self._notify(row["id"], row["webhook_url"], status)

    def _start_unprocessed(self, row: dict[str, Any]) -> dict[str, Any] | None:
        """Cancel or expiry before processing started: check the input file so that all its
        requests can go to the error file (an invalid file fails validation instead)."""
        return self._begin_run(row)

    def _fail(
        self,
        row: dict[str, Any],
        errors: list[dict[str, Any]],
        expect: tuple[str, ...] | None = None,
    ) -> None:
        now = time.time()
        self._drop_run(row["id"])
        with self.store.transaction() as db:
            failed = self.store.update_batch(
                db,
                row["id"],
                expect=expect or (row["status"],),
                status="failed",
                failed_at=int(now),
                errors=orjson.dumps(errors).decode(),
                webhook_pending=int(bool(row["webhook_url"])),
            )
        if failed:
            self._discard_empty_partials(row)
            self._notify(row["id"], row["webhook_url"], "failed")

    # requests

    def _answer(self, row: dict[str, Any], run: RunFiles, indices: list[int]) -> ChunkResults:
        lines = [orjson.loads(run.buffer[slice(*run.spans[i])]) for i in indices]
        replies: list[Reply | None] = [self._simulated_failure(line["custom_id"]) for line in lines]
        todo = [i for i, reply in enumerate(replies) if reply is None]
        answers = self.responder.respond_many(row["endpoint"], [lines[i]["body"] for i in todo])
        rate, seed = self.config.invalid_output_rate, self.config.seed
        for i, answer in zip(todo, answers, strict=True):
            line = lines[i]
            replies[i] = break_answer(answer, line["body"], line["custom_id"], rate=rate, seed=seed)
        tally = ChunkResults()
        for line, reply in zip(lines, replies, strict=True):
            assert reply is not None
            tally.add(line["custom_id"], reply)
        tally.write(run)
        return tally

    def _leftovers(self, row: dict[str, Any], run: RunFiles, code: str) -> ChunkResults:
        reason = "expired" if code == "batch_expired" else "was cancelled"
        message = f"This request could not be executed before the batch {reason}."
        tally = ChunkResults()
        for i in run.order[row["done"] :]:
            custom_id = orjson.loads(run.buffer[slice(*run.spans[i])])["custom_id"]
            tally.add(custom_id, Reply(None, {"code": code, "message": message}))
        tally.write(run)
        return tally

    def _simulated_failure(self, custom_id: str) -> Reply | None:
        rate = self.config.failure_rate
        if not rate:
            return None
        draw = zlib.crc32(f"{self.config.seed}:{custom_id}".encode())
        if draw / 2**32 >= rate:
            return None
        status, code, message = _FAILURES[draw % len(_FAILURES)]
        return Reply(status, error_body(status, message, code))

    # bookkeeping

    def _commit_progress(
        self, db: Any, row: dict[str, Any], run: RunFiles, done: int, tally: ChunkResults
    ) -> None:
        self.store.update_batch(
            db,
            row["id"],
            done=done,
            completed=row["completed"] + tally.completed,
            failed=row["failed"] + tally.failed,
            input_tokens=row["input_tokens"] + tally.input_tokens,
            output_tokens=row["output_tokens"] + tally.output_tokens,
            output_offset=run.output.tell(),
            error_offset=run.errors.tell(),
        )

    def _run(self, row: dict[str, Any]) -> RunFiles:
        run = self._runs.get(row["id"])
        if run is None:
            buffer = map_input(self.store.file_path(row["input_file_id"]).open("rb"))
            run = self._runs[row["id"]] = self._open_run(row, buffer, request_spans(buffer))
        return run

    def _open_run(
        self, row: dict[str, Any], buffer: mmap.mmap | bytes, spans: list[Span]
    ) -> RunFiles:
        order = list(range(len(spans)))
        random.Random(f"{self.config.seed}:{row['id']}").shuffle(order)
        streams = []
        for file_id, offset in (
            (row["partial_output_id"], row["output_offset"]),
            (row["partial_error_id"], row["error_offset"]),
        ):
            path = self.store.file_path(file_id)
            truncate(path, offset)
            streams.append(path.open("ab"))
        return RunFiles(buffer, spans, order, *streams)

    def _drop_run(self, batch_id: str) -> None:
        run = self._runs.pop(batch_id, None)
        if run is not None:
            run.close()

    def _discard_empty_partials(self, row: dict[str, Any]) -> None:
        for file_id in (row["partial_output_id"], row["partial_error_id"]):
            if file_id and self.store.get_file(file_id) is None:
                self.store.file_path(file_id).unlink(missing_ok=True)

    def _notify(self, batch_id: str, url: str | None, status: str) -> None:
        if not url:
            return

        def done() -> None:
            with self.store.transaction() as db:
                self.store.update_batch(db, batch_id, webhook_pending=0)

        deliver(url, batch_event(batch_id, status), done)


class _StatusChanged(Exception):
    """The batch's status changed (an API call) while the worker was finishing it."""


def _error(code: str, message: str) -> dict[str, Any]:
    return {"code": code, "message": message, "param": None, "line": None}
