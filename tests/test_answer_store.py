"""The answer store (issue 11): successful answers kept under request fingerprints in
immutable Parquet segments, per provider namespace, safe under concurrent writers."""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
import uuid
from pathlib import Path

import fsspec
import msgspec
import orjson
import pytest

from dagster_inference_batch.answer_store import (
    ANSWER_STORE_ENV,
    AnswerStore,
    StoredAnswer,
    default_store_url,
    namespace_for,
)

NAMESPACE = namespace_for("https://api.example.com/v1")
WRITERS = 4
PUTS = 50
ENTRIES = 20


def line(custom_id: str, status: int = 200, error: object = None, text: str = "ok") -> bytes:
    return orjson.dumps(
        {
            "id": f"req-{custom_id}",
            "custom_id": custom_id,
            "response": {
                "status_code": status,
                "request_id": f"r-{custom_id}",
                "body": {"choices": [{"message": {"content": text}}]},
            },
            "error": error,
        }
    )


def answer(fingerprint: str, stored_at: float | None = None, **fields) -> StoredAnswer:
    return StoredAnswer(
        fingerprint=fingerprint,
        line=fields.pop("line", line(fingerprint)),
        batch_id=fields.pop("batch_id", "batch_1"),
        stored_at=time.time() if stored_at is None else stored_at,
        **fields,
    )


def segments(store_dir: Path) -> list[str]:
    folder = store_dir / NAMESPACE / "segments"
    return sorted(os.listdir(folder)) if folder.exists() else []


@pytest.fixture(params=["local", "memory"])
def store_url(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path / "answers")
        return
    url = f"memory://answer-store-test-{uuid.uuid4().hex}"
    yield url
    fs, root = fsspec.core.url_to_fs(url)
    if fs.exists(root):
        fs.rm(root, recursive=True)


def test_round_trip(store_url):
    store = AnswerStore(store_url, namespace=NAMESPACE)
    first = answer("f1", input_tokens=12, output_tokens=3, line=line("f1", text="héllo ✓"))
    second = answer("f2", batch_id="batch_2")
    assert store.put([first, second]) == 2
    assert store.put(iter([answer("f3")])) == 1

    found = AnswerStore(store_url, namespace=NAMESPACE).lookup(["f1", "f2", "missing"])
    assert found == {"f1": first, "f2": second}
    assert found["f1"].line == first.line and isinstance(found["f1"].line, bytes)
    assert found["f2"].input_tokens is None and found["f2"].output_tokens is None
    assert len(store) == 3
    assert store.url == store_url


def test_local_file_url_reads_the_same_store(tmp_path):
    AnswerStore(str(tmp_path), namespace=NAMESPACE).put([answer("f1")])
    found = AnswerStore(f"file://{tmp_path}", namespace=NAMESPACE).lookup(["f1"])
    assert list(found) == ["f1"]


def test_newest_entry_wins_whatever_the_write_order(tmp_path):
    store = AnswerStore(str(tmp_path), namespace=NAMESPACE)
    store.put([answer("a", 100.0, batch_id="old"), answer("b", 300.0, batch_id="new")])
    store.put([answer("a", 200.0, batch_id="new"), answer("b", 250.0, batch_id="old")])
    store.put([answer("c", 100.0, batch_id="old"), answer("c", 150.0, batch_id="new")])

    found = store.lookup(["a", "b", "c"])
    assert {fp: a.batch_id for fp, a in found.items()} == {"a": "new", "b": "new", "c": "new"}
    assert found["a"].stored_at == 200.0
    assert len(store) == 3


def test_max_age_ignores_older_entries(tmp_path):
    store = AnswerStore(str(tmp_path), namespace=NAMESPACE)
    now = time.time()
    store.put([answer("old", now - 1000), answer("fresh", now), answer("both", now - 1000)])
    store.put([answer("both", now - 10, batch_id="recent")])

    assert set(store.lookup(["old", "fresh", "both"])) == {"old", "fresh", "both"}
    found = store.lookup(["old", "fresh", "both"], max_age=100)
    assert set(found) == {"fresh", "both"}
    assert found["both"].batch_id == "recent"
    assert store.lookup(["both"], max_age=1) == {}


def test_namespaces_isolate_providers(tmp_path):
    local = AnswerStore(str(tmp_path), namespace=namespace_for("http://127.0.0.1:8000/v1"))
    real = AnswerStore(str(tmp_path), namespace=NAMESPACE)
    local.put([answer("f1", batch_id="synthetic")])

    assert real.lookup(["f1"]) == {}
    assert len(real) == 0
    assert local.lookup(["f1"])["f1"].batch_id == "synthetic"
    assert namespace_for("https://api.example.com/v1/") == NAMESPACE


@pytest.mark.parametrize("namespace", ["", "a/b", "..", ".", "../x", "a b", "ns\n"])
def test_unsafe_namespace_is_refused(tmp_path, namespace):
    with pytest.raises(ValueError, match="namespace"):
        AnswerStore(str(tmp_path), namespace=namespace)


@pytest.mark.parametrize(
    "bad_line",
    [
        line("x", status=500),
        line("x", status=429),
        line("x", error={"code": "server_error", "message": "boom"}),
        orjson.dumps({"custom_id": "x", "response": None, "error": {"message": "expired"}}),
        orjson.dumps({"custom_id": "x", "error": None}),
        b"not json",
        line("x") + b"\n",
    ],
)
def test_failed_lines_are_refused_and_nothing_is_written(tmp_path, bad_line):
    store = AnswerStore(str(tmp_path / "answers"), namespace=NAMESPACE)
    with pytest.raises(ValueError, match="'fp-bad'"):
        store.put([answer("fp-good"), answer("fp-bad", line=bad_line)])
    assert not (tmp_path / "answers").exists()
    assert store.lookup(["fp-good", "fp-bad"]) == {}


def test_empty_put_and_lookups_create_nothing(tmp_path):
    root = tmp_path / "answers"
    store = AnswerStore(str(root), namespace=NAMESPACE)
    assert store.put([]) == 0
    assert store.lookup(["f1"]) == {}
    assert store.lookup([]) == {}
    assert len(store) == 0
    assert not root.exists()


def test_new_segments_are_seen_by_an_existing_store(tmp_path):
    reader = AnswerStore(str(tmp_path), namespace=NAMESPACE)
    AnswerStore(str(tmp_path), namespace=NAMESPACE).put([answer("f1", 100.0)])
    assert reader.lookup(["f1"])["f1"].stored_at == 100.0
    AnswerStore(str(tmp_path), namespace=NAMESPACE).put([answer("f1", 200.0), answer("f2")])
    found = reader.lookup(["f1", "f2"])
    assert found["f1"].stored_at == 200.0 and "f2" in found
    assert len(reader) == 2


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_unreadable_segment_is_skipped_with_a_warning(tmp_path, caplog, damage):
    store = AnswerStore(str(tmp_path), namespace=NAMESPACE)
    store.put([answer("good")])
    store.put([answer("lost")])
    folder = tmp_path / NAMESPACE / "segments"
    damaged = folder / segments(tmp_path)[1]
    data = damaged.read_bytes()
    damaged.write_bytes(b"this is not parquet" if damage == "garbage" else data[: len(data) // 2])

    with caplog.at_level(logging.WARNING, logger="dagster_inference_batch.answer_store"):
        found = AnswerStore(str(tmp_path), namespace=NAMESPACE).lookup(["good", "lost"])
    assert list(found) == ["good"]
    assert damaged.name in caplog.text
    assert len(store) == 1


def _write_entries(root: str, writer: int, start, errors) -> None:
    """One writer process: PUTS segments of ENTRIES answers each."""
    try:
        store = AnswerStore(root, namespace=NAMESPACE)
        start.wait()
        for put in range(PUTS):
            fingerprints = [f"w{writer}-p{put}-e{entry}" for entry in range(ENTRIES)]
            assert store.put([answer(fp) for fp in fingerprints]) == ENTRIES
    except BaseException as error:  # reported to the parent: a child's traceback is lost
        errors.put(f"writer {writer}: {error!r}")
        raise


def test_concurrent_writer_processes_and_a_reader_lose_nothing(tmp_path):
    root = str(tmp_path / "answers")
    every = [f"w{w}-p{p}-e{e}" for w in range(WRITERS) for p in range(PUTS) for e in range(ENTRIES)]
    context = multiprocessing.get_context("spawn")
    start, errors = context.Barrier(WRITERS + 1), context.Queue()
    writers = [
        context.Process(target=_write_entries, args=(root, writer, start, errors))
        for writer in range(WRITERS)
    ]
    for process in writers:
        process.start()

    done = threading.Event()
    reader_errors: list[BaseException] = []
    seen: list[int] = []

    def read() -> None:
        store = AnswerStore(root, namespace=NAMESPACE)
        while not done.is_set():
            try:
                found = store.lookup(every)
                assert all(found[fp].line == line(fp) for fp in found)
                seen.append(len(found))
            except BaseException as error:
                reader_errors.append(error)
                return

    reader = threading.Thread(target=read)
    reader.start()
    start.wait(timeout=120)
    for process in writers:
        process.join(timeout=120)
    done.set()
    reader.join(timeout=60)

    assert errors.empty()
    assert [process.exitcode for process in writers] == [0] * WRITERS
    assert reader_errors == []
    assert seen and seen == sorted(seen)  # a lookup never loses what an earlier one found
    found = AnswerStore(root, namespace=NAMESPACE).lookup(every)
    assert len(found) == len(every) == WRITERS * PUTS * ENTRIES
    assert all(found[fp].line == line(fp) for fp in every)
    names = os.listdir(tmp_path / "answers" / NAMESPACE / "segments")
    assert len(names) == WRITERS * PUTS
    assert all(name.startswith("segment-") and name.endswith(".parquet") for name in names)


def test_default_store_url_precedence(monkeypatch, tmp_path):
    for name in (ANSWER_STORE_ENV, "DAGSTER_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_store_url() == str(
        tmp_path / "home" / ".cache" / "dagster-inference-batch" / "answers"
    )

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_store_url() == str(tmp_path / "cache" / "dagster-inference-batch" / "answers")

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    assert default_store_url() == str(tmp_path / "dagster" / "inference_batch" / "answers")

    monkeypatch.setenv(ANSWER_STORE_ENV, "s3://bucket/answers")
    assert default_store_url() == "s3://bucket/answers"

    monkeypatch.setenv(ANSWER_STORE_ENV, "")
    assert default_store_url() == str(tmp_path / "dagster" / "inference_batch" / "answers")


def test_a_job_stores_only_the_successful_lines_of_its_output_files(tmp_path):
    from dagster_inference_batch.incremental import answers_for_unsent
    from dagster_inference_batch.job_manifest import Manifest
    from dagster_inference_batch.results import ResultFile

    output = tmp_path / "output.jsonl"
    lines = [line("a"), line("b", status=500), line("c", error={}), b"[]", line("d")]
    output.write_bytes(b"\n".join(lines) + b"\n")
    manifest = Manifest(["a", "b", "c", "d"], ["fa", "fb", "fc", "fd"], [True] * 4)
    store = AnswerStore(str(tmp_path / "answers"), namespace=NAMESPACE)
    files = [ResultFile(output, "output", "batch_1", 1)]

    made, from_store = answers_for_unsent(manifest, files, store, tmp_path)

    assert (made, from_store) == ([], [])
    found = store.lookup(["fa", "fb", "fc", "fd"])
    assert sorted(found) == ["fa", "fd"]
    assert found["fd"].line == line("d") and found["fd"].batch_id == "batch_1"


def test_the_answers_stored_are_the_same_whether_decoded_typed_or_whole(tmp_path, monkeypatch):
    from dagster_inference_batch import incremental
    from dagster_inference_batch.job_manifest import Manifest
    from dagster_inference_batch.results import ResultFile

    def usage_line(custom_id: object, usage: object, **response: object) -> bytes:
        body = {"choices": [], "usage": usage} if usage != "none" else None
        reply = {"status_code": 200, "body": body, **response}
        return orjson.dumps({"custom_id": custom_id, "response": reply, "error": None})

    lines = [
        usage_line("a", {"prompt_tokens": 3, "completion_tokens": 4}),
        usage_line("b", {"prompt_tokens": None, "input_tokens": 5, "output_tokens": 6}),
        usage_line("c", {"input_tokens": 7, "output_tokens": 8}),
        usage_line("d", None),
        usage_line("e", "none"),
        usage_line(7, {"prompt_tokens": 1}),
        usage_line("f", {}, status_code=True),
        usage_line("g", {}, status_code=299),
        usage_line("h", {}, status_code="200"),
        orjson.dumps({"custom_id": "i", "response": {"status_code": 200}, "error": False}),
        b'{"custom_id": "j", "response": {"status_code": 200, "body": {"usage": []}}}',
    ]
    output = tmp_path / "output.jsonl"
    output.write_bytes(b"\n".join(lines) + b"\n")
    ids = [*"abcde", "7", *"fghij"]
    manifest = Manifest(ids, [f"f-{i}" for i in ids], [True] * len(ids))
    files = [ResultFile(output, "output", "batch_1", 1)]

    def stored(name: str) -> dict:
        store = AnswerStore(str(tmp_path / name), namespace=NAMESPACE)
        incremental.answers_for_unsent(manifest, files, store, tmp_path)
        found = store.lookup(manifest.fingerprints)
        return {f: (a.line, a.input_tokens, a.output_tokens) for f, a in found.items()}

    typed = stored("typed")

    def refuse(line: bytes) -> None:
        raise msgspec.ValidationError("parse it whole")

    with monkeypatch.context() as patched:
        patched.setattr(incremental, "_DECODE_LINE", refuse)
        whole = stored("whole")
    assert typed == whole
    assert sorted(typed) == ["f-7", "f-a", "f-b", "f-c", "f-d", "f-e", "f-g", "f-j"]
    assert typed["f-b"][1:] == (None, 6) and typed["f-c"][1:] == (7, 8)
