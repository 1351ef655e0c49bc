"""Server options: one dataclass, mapped to and from command-line flags."""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..providers import provider_profile

API_KEY_ENV = "INFERENCE_LOCAL_SERVER_API_KEY"
UPSTREAM_API_KEY_ENV = "INFERENCE_UPSTREAM_API_KEY"


def _opt(default: Any, help: str, *, env: str | None = None) -> Any:
    """A field; with `env`, a secret whose flag defaults to that environment variable and
    which `LocalBatchServer` passes through the environment rather than argv (`ps`)."""
    return field(default=default, metadata={"help": help, "env": env})


@dataclass
class ServerConfig:
    """Every option of the local Batch API server; each field is also a ``--flag``.

    The fields and their meaning are listed by ``dagster-inference-batch serve --help``
    (each field's ``help`` metadata).

    Raises:
        ValueError: An option is out of range, or ``responder="upstream"`` lacks
            ``upstream_url``.

    Example:
        >>> config = ServerConfig(data_dir="data", fault_rate=0.1, api_key="secret")
        >>> config.to_argv()
        ['--data-dir', 'data', '--fault-rate', '0.1']
        >>> config.secret_env()
        {'INFERENCE_LOCAL_SERVER_API_KEY': 'secret', 'INFERENCE_UPSTREAM_API_KEY': None}
    """

    data_dir: Path = field(metadata={"help": "directory holding the SQLite state and the files"})
    host: str = _opt("127.0.0.1", "interface to bind")
    port: int = _opt(8787, "port to bind; 0 picks a free one")
    requests_per_second: float | None = _opt(None, "processing speed; unset or 0 = flat out")
    validating_seconds: float = _opt(0.2, "time a batch spends in `validating`")
    finalizing_seconds: float = _opt(0.2, "time a batch spends in `finalizing`/`cancelling`")
    expire_after: float | None = _opt(None, "seconds until a batch expires (default 24h)")
    overrun_window: bool = _opt(
        False, "never expire a batch at expires_at (a provider late to end its window)"
    )
    expire_after_requests: int | None = _opt(
        None, "a batch expires once this many of its requests are answered (deterministic)"
    )
    failure_rate: float = _opt(0.0, "fraction of requests answered with a 4xx/5xx body")
    fault_rate: float = _opt(0.0, "fraction of API calls answered 500, 429 or dropped")
    invalid_output_rate: float = _opt(
        0.0,
        "fraction of structured answers (json_schema requests) broken: truncated JSON, a "
        "missing required field, a wrong type or a value outside an enum (by seed and body)",
    )
    latency_ms: float = _opt(0.0, "added latency per API call")
    api_key: str | None = _opt(
        None, "required bearer token; unset = any non-empty bearer", env=API_KEY_ENV
    )
    allow_insecure_webhooks: bool = _opt(False, "allow plain-http webhook_url to loopback")
    max_requests_per_batch: int | None = _opt(
        None, "batches with more requests fail validation (default: the profile's, or 50000)"
    )
    profile: str | None = _opt(
        None,
        "provider to play: inference.net | openai | compatible (limits, endpoints, webhook_url,"
        " upload pacing); unset = permissive",
    )
    upload_interval: float | None = _opt(
        None, "least seconds between two file uploads per key (default: the profile's, or 0)"
    )
    model: list[str] = field(
        default_factory=list,
        metadata={"help": "a model id /v1/models lists besides the built-in ones (repeatable)"},
    )
    responder: str = _opt("offline", "offline | upstream")
    upstream_url: str | None = _opt(None, "base URL of an OpenAI-compatible server (.../v1)")
    upstream_api_key: str | None = _opt(
        None, "bearer for the upstream server", env=UPSTREAM_API_KEY_ENV
    )
    upstream_concurrency: int = _opt(8, "concurrent upstream requests")
    upstream_model: str | None = _opt(None, "override the model of every forwarded body")
    seed: int = _opt(0, "seed for output order, failures and faults")

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        if self.responder not in ("offline", "upstream"):
            raise ValueError(f"responder must be 'offline' or 'upstream', not {self.responder!r}")
        if self.responder == "upstream" and not self.upstream_url:
            raise ValueError("responder 'upstream' needs upstream_url")
        for name in ("failure_rate", "fault_rate", "invalid_output_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.expire_after_requests is not None and self.expire_after_requests < 0:
            raise ValueError("expire_after_requests must be 0 or more")
        if self.profile is not None:
            provider_profile(self.profile)  # ValueError naming the known ones
        if self.upload_interval is not None and self.upload_interval < 0:
            raise ValueError("upload_interval must be 0 or more")
        self.model = list(self.model)

    @staticmethod
    def flag(name: str) -> str:
        """The command-line flag of a field.

        Args:
            name: The field's name, such as ``fault_rate``.

        Returns:
            The flag, such as ``--fault-rate``.
        """
        return "--" + name.replace("_", "-")

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Declare one flag per field; a secret's flag defaults to its environment variable.

        Args:
            parser: The parser (or subcommand parser) to add the flags to.
        """
        for f in dataclasses.fields(cls):
            kind = _scalar_type(f.type)
            env = f.metadata.get("env")
            if env:
                parser.add_argument(
                    cls.flag(f.name),
                    default=os.environ.get(env) or f.default,
                    help=f"{f.metadata['help']} (default: ${env}; the flag shows in `ps`)",
                )
            elif str(f.type).startswith("list"):
                parser.add_argument(
                    cls.flag(f.name), action="append", default=[], help=f.metadata["help"]
                )
            elif kind is bool:
                parser.add_argument(cls.flag(f.name), action="store_true", help=f.metadata["help"])
            elif f.default is dataclasses.MISSING:
                parser.add_argument(
                    cls.flag(f.name), type=kind, required=True, help=f.metadata["help"]
                )
            else:
                parser.add_argument(
                    cls.flag(f.name), type=kind, default=f.default, help=f.metadata["help"]
                )

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace) -> ServerConfig:
        """Build a config from parsed flags.

        Args:
            ns: What the parser from `add_arguments` returned.

        Returns:
            The config.

        Raises:
            ValueError: An option is out of range.
        """
        return cls(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(cls)})

    def to_argv(self) -> list[str]:
        """The flags that reproduce this config, defaults and secrets left out.

        The secrets travel in `secret_env()`, so they never show in a process listing.

        Returns:
            The flags and their values, as strings.
        """
        argv: list[str] = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("env") or (f.name != "data_dir" and value == f.default):
                continue
            if isinstance(value, list):
                for item in value:
                    argv += [self.flag(f.name), str(item)]
            elif value is True:
                argv.append(self.flag(f.name))
            elif value is not None and value is not False:
                argv += [self.flag(f.name), str(value)]
        return argv

    def secret_env(self) -> dict[str, str | None]:
        """Environment variables carrying the secrets.

        Returns:
            Each variable's value, or None where the child process must not have it set.
        """
        return {
            f.metadata["env"]: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.metadata.get("env")
        }


def _scalar_type(annotation: Any) -> type:
    text = str(annotation)
    for name, kind in (("bool", bool), ("float", float), ("int", int), ("Path", Path)):
        if text.startswith(name):
            return kind
    return str
