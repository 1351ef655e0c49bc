"""An S3-compatible server for tests: moto's, in server mode on loopback (no real AWS).

`s3_server` (session) starts `moto.server.ThreadedMotoServer` on a free loopback port;
`s3_bucket` (per test) creates a fresh bucket on it and points the AWS environment at
the server (`AWS_ENDPOINT_URL`, dummy credentials), so boto3, s3fs and anything built on
them reach it by URL alone (`s3://<bucket>/...`).
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest


@dataclass
class S3Server:
    endpoint_url: str

    def storage_options(self) -> dict:
        """fsspec/s3fs options reaching this server."""
        return {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": "us-east-1"},
        }


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    moto_server = pytest.importorskip("moto.server", reason="needs moto[server]")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield S3Server(endpoint_url=f"http://127.0.0.1:{port}")
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket's name; the AWS environment points at `s3_server`."""
    import boto3

    for name, value in {
        "AWS_ENDPOINT_URL": s3_server.endpoint_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    bucket = f"bucket-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server.endpoint_url).create_bucket(Bucket=bucket)
    return bucket
