"""HTTP routes of the Files and Batches API (starlette)."""

from __future__ import annotations

import hmac
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .config import ServerConfig
from .create_checks import check_create_body
from .faults import FaultInjector
from .models import ModelCatalog, ModelCheckingResponder
from .objects import APIError, batch_object, file_object, list_object, not_found
from .provider_rules import UploadPacer
from .responders import OfflineResponder, Responder
from .store import BATCH_ID, FILE_ID, FINAL_STATUSES, Store, new_id
from .worker import Worker

UPLOAD_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
CANCELLABLE = ("validating", "in_progress", "finalizing")
DEFAULT_WINDOW_SECONDS = 24 * 3600
COPY_CHUNK = 1024 * 1024


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body, status_code=error.status, headers=error.headers)


class BearerAuth:
    """401 unless the request carries a bearer token (the configured one, when set)."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = self._problem(dict(scope["headers"]).get(b"authorization", b""))
            if problem:
                error = APIError(401, problem, code="invalid_api_key")
                await error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _problem(self, header: bytes) -> str | None:
        scheme, _, token = header.decode("latin-1").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return "You didn't provide an API key (Authorization: Bearer <key>)."
        if self.api_key and not hmac.compare_digest(token.encode(), self.api_key.encode()):
            return "Incorrect API key provided."
        return None


class Api:
    """Route handlers over the store; wakes the worker when there is news."""

    def __init__(self, store: Store, worker: Worker, config: ServerConfig) -> None:
        self.store = store
        self.worker = worker
        self.config = config
        self.rules = worker.rules
        self.models = ModelCatalog(config.model, config.profile)
        self.pacer = UploadPacer(self.rules.upload_interval)

    # models

    async def list_models(self, request: Request) -> Response:
        return JSONResponse(self.models.list_body())

    async def get_model(self, request: Request) -> Response:
        return JSONResponse(self.models.model_body(request.path_params["model"]))

    # files

    async def create_file(self, request: Request) -> Response:
        key = request.headers.get("authorization", "")
        try:
            previous = self.pacer.reserve(key)
        except APIError:
            async for _ in request.stream():  # read the upload, so the client sees the 429
                pass
            raise
        try:
            return await self._store_upload(request)
        except BaseException:
            self.pacer.release(key, previous)  # a refused upload does not use the slot
            raise

    async def _store_upload(self, request: Request) -> Response:
        async with request.form(max_files=1, max_fields=10) as form:
            upload, purpose = form.get("file"), form.get("purpose")
            if not isinstance(upload, UploadFile):
                raise APIError(400, "Missing multipart field 'file'.", param="file")
            if purpose not in UPLOAD_PURPOSES:
                raise APIError(
                    400, f"'purpose' must be one of {', '.join(UPLOAD_PURPOSES)}.", param="purpose"
                )
            file_id = new_id("file-")
            path = self.store.file_path(file_id)
            try:
                nbytes = await run_in_threadpool(_copy, upload.file, path)
                await run_in_threadpool(
                    self._add_file, file_id, nbytes, upload.filename or "upload.jsonl", str(purpose)
                )
            except BaseException:
                path.unlink(missing_ok=True)  # no orphan content without its record
                raise
        return JSONResponse(file_object(await self._file(file_id)))

    async def list_files(self, request: Request) -> Response:
        order = request.query_params.get("order", "desc")
        if order not in ("asc", "desc"):
            raise APIError(400, "'order' must be 'asc' or 'desc'.", param="order")
        rows, has_more = await run_in_threadpool(
            self.store.list_files,
            purpose=request.query_params.get("purpose"),
            limit=_int_param(request, "limit", 10_000, 1, 10_000),
            after=request.query_params.get("after"),
            order=order,
        )
        return JSONResponse(list_object([file_object(r) for r in rows], has_more))

    async def get_file(self, request: Request) -> Response:
        return JSONResponse(file_object(await self._file(request.path_params["file_id"])))

    async def file_content(self, request: Request) -> Response:
        row = await self._file(request.path_params["file_id"])
        try:
            content = await run_in_threadpool(self.store.file_path(row["id"]).open, "rb")
        except FileNotFoundError:
            raise not_found("File content", row["id"]) from None
        size = os.fstat(content.fileno()).st_size
        return StreamingResponse(
            _read_chunks(content, size),
            media_type="application/octet-stream",
            headers={"content-length": str(size)},
        )

    async def delete_file(self, request: Request) -> Response:
        row = await self._file(request.path_params["file_id"])
        await run_in_threadpool(self.store.delete_file, row["id"])
        return JSONResponse({"id": row["id"], "object": "file", "deleted": True})

    # batches

    async def create_batch(self, request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            raise APIError(400, "The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise APIError(400, "The request body must be a JSON object.")
        await self._check_create(body)
        now = time.time()
        batch_id = new_id("batch_")
        metadata = body.get("metadata")
        await run_in_threadpool(
            self.store.add_batch,
            {
                "id": batch_id,
                "endpoint": body["endpoint"],
                "input_file_id": body["input_file_id"],
                "completion_window": body["completion_window"],
                "metadata": orjson.dumps(metadata).decode() if metadata is not None else None,
                "webhook_url": body.get("webhook_url"),
                "status": "validating",
                "created_ts": now,
                "phase_ts": now,
                "expires_ts": now + (self.config.expire_after or DEFAULT_WINDOW_SECONDS),
            },
        )
        self.worker.wake.set()
        return JSONResponse(batch_object(await self._batch(batch_id)))

    async def list_batches(self, request: Request) -> Response:
        after = request.query_params.get("after")
        if after is not None and not BATCH_ID.fullmatch(after):
            raise APIError(400, "'after' must be a batch id.", param="after")
        rows, has_more = await run_in_threadpool(
            self.store.list_batches, limit=_int_param(request, "limit", 20, 1, 100), after=after
        )
        return JSONResponse(list_object([batch_object(r) for r in rows], has_more))

    async def get_batch(self, request: Request) -> Response:
        return JSONResponse(batch_object(await self._batch(request.path_params["batch_id"])))

    async def cancel_batch(self, request: Request) -> Response:
        row = await self._batch(request.path_params["batch_id"])
        if row["status"] in FINAL_STATUSES:
            raise APIError(
                409,
                f"Cannot cancel a batch with status '{row['status']}'.",
                code="batch_not_cancellable",
            )
        await run_in_threadpool(self._cancel, row["id"])
        self.worker.wake.set()
        return JSONResponse(batch_object(await self._batch(row["id"])))

    # helpers (store calls run in the threadpool: SQLite may wait for the write lock)

    def _add_file(self, file_id: str, nbytes: int, filename: str, purpose: str) -> None:
        with self.store.transaction() as db:
            self.store.add_file(db, file_id, nbytes, filename, purpose)

    def _cancel(self, batch_id: str) -> None:
        now = time.time()
        with self.store.transaction() as db:
            self.store.update_batch(
                db,
                batch_id,
                expect=CANCELLABLE,
                status="cancelling",
                cancelling_at=int(now),
                phase_ts=now,
            )

    async def _check_create(self, body: dict[str, Any]) -> None:
        check_create_body(
            body, self.rules, allow_insecure_webhooks=self.config.allow_insecure_webhooks
        )
        source = await self._file(body["input_file_id"])
        if source["purpose"] != "batch":
            raise APIError(
                400,
                f"The input file must have purpose 'batch', not '{source['purpose']}'.",
                param="input_file_id",
                code="invalid_value",
            )

    async def _file(self, file_id: str) -> dict[str, Any]:
        row = None
        if FILE_ID.fullmatch(file_id):
            row = await run_in_threadpool(self.store.get_file, file_id)
        if row is None:
            raise not_found("File", file_id)
        return row

    async def _batch(self, batch_id: str) -> dict[str, Any]:
        row = None
        if BATCH_ID.fullmatch(batch_id):
            row = await run_in_threadpool(self.store.get_batch, batch_id)
        if row is None:
            raise not_found("Batch", batch_id)
        return row


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise APIError(400, f"'{name}' must be an integer from {low} to {high}.", param=name)
    return value


def _copy(source: BinaryIO, path: Path) -> int:
    """Copy an upload to its file in chunks; the byte count."""
    source.seek(0)
    with path.open("wb") as target:
        shutil.copyfileobj(source, target, COPY_CHUNK)
        return target.tell()


async def _read_chunks(content: BinaryIO, size: int) -> AsyncIterator[bytes]:
    """`size` bytes of `content` in chunks of `COPY_CHUNK`, read off the event loop; closes it."""
    try:
        while size > 0:
            chunk = await run_in_threadpool(content.read, min(COPY_CHUNK, size))
            if not chunk:
                return
            size -= len(chunk)
            yield chunk
    finally:
        content.close()


def make_responder(config: ServerConfig) -> Responder:
    """The responder of `config`; with a profile, the offline one answers listed models only."""
    if config.responder == "upstream":
        assert config.upstream_url
        from .upstream import UpstreamResponder  # the openai SDK, only when forwarding

        return UpstreamResponder(
            config.upstream_url,
            api_key=config.upstream_api_key,
            concurrency=config.upstream_concurrency,
            model=config.upstream_model,
        )
    if config.profile is None:
        return OfflineResponder()
    return ModelCheckingResponder(OfflineResponder(), ModelCatalog(config.model, config.profile))


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = "not_found" if exc.status_code == 404 else None
    return error_response(APIError(exc.status_code, f"{exc.detail}: {request.url.path}", code=code))


async def _server_error(request: Request, exc: Exception) -> Response:
    return error_response(APIError(500, "The server had an error.", type="server_error"))


def create_app(config: ServerConfig, on_ready: Callable[[], None] | None = None) -> ASGIApp:
    """The ASGI app of the Files and Batches API; its lifespan runs the batch worker.

    Args:
        config: The server's options.
        on_ready: Called once the worker runs, at the end of the app's lifespan startup.

    Returns:
        The app, wrapped in the fault injector (which passes calls through untouched unless
        ``config.fault_rate`` or ``config.latency_ms`` is set).
    """
    store = Store(config.data_dir)
    worker = Worker(store, config, make_responder(config))
    api = Api(store, worker, config)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        worker.start()
        if on_ready is not None:
            on_ready()
        yield
        await run_in_threadpool(worker.stop)

    routes = [
        Route("/v1/models", api.list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", api.get_model, methods=["GET"]),
        Route("/v1/files", api.create_file, methods=["POST"]),
        Route("/v1/files", api.list_files, methods=["GET"]),
        Route("/v1/files/{file_id}", api.get_file, methods=["GET"]),
        Route("/v1/files/{file_id}", api.delete_file, methods=["DELETE"]),
        Route("/v1/files/{file_id}/content", api.file_content, methods=["GET"]),
        Route("/v1/batches", api.create_batch, methods=["POST"]),
        Route("/v1/batches", api.list_batches, methods=["GET"]),
        Route("/v1/batches/{batch_id}", api.get_batch, methods=["GET"]),
        Route("/v1/batches/{batch_id}/cancel", api.cancel_batch, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(BearerAuth, api_key=config.api_key)],
        exception_handlers={
            APIError: _api_error,
            HTTPException: _http_error,
            Exception: _server_error,
        },
        lifespan=lifespan,
    )
    # Outermost, so that faults also strike calls the bearer check would refuse.
    return FaultInjector(
        app, fault_rate=config.fault_rate, latency_ms=config.latency_ms, seed=config.seed
    )
