"""Shared by the tests (``tests/``) and the package's doctests.

Doctests (``pytest --doctest-modules dagster_inference_batch``) get these names, on a
local Batch API server started once for the session:

- ``local_server_url``: its base URL (``http://127.0.0.1:PORT/v1``);
- ``client``: an ``InferenceBatchClient`` talking to it;
- ``dg`` (dagster) and ``pd`` (pandas).

Every doctest runs with the working directory in a temporary folder, so an example may
write files. Every test and doctest has its own answer store (incremental runs), so no
answer kept by one is reused by another, and none lands in the user's cache directory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _pytest.doctest import DoctestItem

pytest_plugins = ["tests.server_fixtures", "tests.postgres_fixtures", "tests.s3_fixtures"]


@pytest.fixture(autouse=True)
def _answer_store_per_test(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERENCE_BATCH_ANSWER_STORE", str(tmp_path / "answer-store"))


@pytest.fixture(autouse=True)
def _doctest_names(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[None]:
    if not isinstance(request.node, DoctestItem):
        yield
        return
    import dagster as dg
    import pandas as pd

    from dagster_inference_batch import InferenceBatchClient

    server = request.getfixturevalue("shared_batch_server")
    namespace = request.getfixturevalue("doctest_namespace")
    with InferenceBatchClient(api_key="test-key", base_url=server.base_url) as client:
        namespace.update(local_server_url=server.base_url, client=client, dg=dg, pd=pd)
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(tmp_path)
            yield
