"""Server state: SQLite (WAL) for records, plain files under `files/` for contents."""

from __future__ import annotations

import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

FILE_ID = re.compile(r"file-[0-9a-f]{24}")
BATCH_ID = re.compile(r"batch_[0-9a-f]{24}")

FINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    endpoint TEXT NOT NULL,
    input_file_id TEXT NOT NULL,
    completion_window TEXT NOT NULL,
    metadata TEXT,
    webhook_url TEXT,
    model TEXT,
    status TEXT NOT NULL,
    errors TEXT,
    created_ts REAL NOT NULL,
    phase_ts REAL NOT NULL,
    expires_ts REAL NOT NULL,
    in_progress_at INTEGER, finalizing_at INTEGER, completed_at INTEGER, failed_at INTEGER,
    expired_at INTEGER, cancelling_at INTEGER, cancelled_at INTEGER,
    total INTEGER NOT NULL DEFAULT 0,
    completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    done INTEGER NOT NULL DEFAULT 0,
    partial_output_id TEXT, partial_error_id TEXT,
    output_offset INTEGER NOT NULL DEFAULT 0,
    error_offset INTEGER NOT NULL DEFAULT 0,
    output_file_id TEXT, error_file_id TEXT,
    webhook_pending INTEGER NOT NULL DEFAULT 0
);
"""


def new_id(prefix: str) -> str:
    """A fresh id such as `file-<24 hex>` or `batch_<24 hex>`."""
    return prefix + secrets.token_hex(12)


class Store:
    """Records in SQLite, one connection per thread; contents in `files/<id>.jsonl`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.files_dir = self.data_dir / "files"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self._db_path = self.data_dir / "state.sqlite3"
        self._local = threading.local()
        self.db.executescript(_SCHEMA)

    @property
    def db(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self._db_path, isolation_level=None, timeout=30)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def file_path(self, file_id: str) -> Path:
        """Where a file's content lives; only well-formed ids ever reach the filesystem."""
        if not FILE_ID.fullmatch(file_id):
            raise ValueError(f"not a file id: {file_id!r}")
        return self.files_dir / f"{file_id}.jsonl"

    # files

    def add_file(
        self, db: sqlite3.Connection, file_id: str, nbytes: int, filename: str, purpose: str
    ) -> None:
        db.execute(
            "INSERT INTO files (id, bytes, created_at, filename, purpose) VALUES (?,?,?,?,?)",
            (file_id, nbytes, int(time.time()), filename, purpose),
        )

    def get_file(self, file_id: str) -> dict[str, Any] | None:
        return self._one("files", file_id)

    def list_files(
        self, *, purpose: str | None, limit: int, after: str | None, order: str
    ) -> tuple[list[dict[str, Any]], bool]:
        where, args = ["1=1"], []
        if purpose:
            where.append("purpose = ?")
            args.append(purpose)
        return self._page(
            "files", where, args, limit=limit, after=after, newest_first=order == "desc"
        )

    def delete_file(self, file_id: str) -> bool:
        with self.transaction() as db:
            deleted = db.execute("DELETE FROM files WHERE id = ?", (file_id,)).rowcount
        if deleted:
            self.file_path(file_id).unlink(missing_ok=True)
        return bool(deleted)

    # batches

    def add_batch(self, row: dict[str, Any]) -> None:
        cols = ", ".join(row)
        marks = ", ".join("?" * len(row))
        with self.transaction() as db:
            db.execute(f"INSERT INTO batches ({cols}) VALUES ({marks})", tuple(row.values()))

    def get_batch(self, batch_id: str) -> dict[str, Any] | None:
        return self._one("batches", batch_id)

    def list_batches(self, *, limit: int, after: str | None) -> tuple[list[dict[str, Any]], bool]:
        return self._page("batches", ["1=1"], [], limit=limit, after=after, newest_first=True)

    def active_batches(self) -> list[dict[str, Any]]:
        marks = ", ".join("?" * len(FINAL_STATUSES))
        rows = self.db.execute(
            f"SELECT * FROM batches WHERE status NOT IN ({marks}) ORDER BY seq",
            tuple(FINAL_STATUSES),
        )
        return [dict(r) for r in rows]

    def pending_webhooks(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT * FROM batches WHERE webhook_pending = 1 ORDER BY seq")
        return [dict(r) for r in rows]

    def update_batch(
        self,
        db: sqlite3.Connection,
        batch_id: str,
        *,
        expect: tuple[str, ...] | None = None,
        **fields: Any,
    ) -> bool:
        """Set columns; with `expect`, only while the status is one of those (returns success)."""
        sets = ", ".join(f"{name} = ?" for name in fields)
        sql, args = f"UPDATE batches SET {sets} WHERE id = ?", [*fields.values(), batch_id]
        if expect:
            sql += f" AND status IN ({', '.join('?' * len(expect))})"
            args += expect
        return db.execute(sql, args).rowcount == 1

    # helpers

    def _one(self, table: str, row_id: str) -> dict[str, Any] | None:
        row = self.db.execute(f"SELECT * FROM {table} WHERE id = ?", (row_id,)).fetchone()
        return dict(row) if row else None

    def _page(
        self,
        table: str,
        where: list[str],
        args: list[Any],
        *,
        limit: int,
        after: str | None,
        newest_first: bool,
    ) -> tuple[list[dict[str, Any]], bool]:
        op, direction = ("<", "DESC") if newest_first else (">", "ASC")
        if after is not None:
            where = [*where, f"seq {op} (SELECT seq FROM {table} WHERE id = ?)"]
            args = [*args, after]
        rows = self.db.execute(
            f"SELECT * FROM {table} WHERE {' AND '.join(where)} ORDER BY seq {direction} LIMIT ?",
            (*args, limit + 1),
        ).fetchall()
        return [dict(r) for r in rows[:limit]], len(rows) > limit


def truncate(path: Path, size: int) -> None:
    """Cut a partial result file back to its last committed size (creating it if absent)."""
    with open(path, "ab") as f:
        f.truncate(size)
