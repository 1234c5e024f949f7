"""The HTTP service of ``mseg serve``: a FastAPI app around an :class:`~.engine.Engine` and a
:class:`~.batcher.Batcher`.

Routes: ``POST /v1/segment`` (an image as the raw body or a multipart upload; the query chooses the outputs and
the output taxonomy; the answer is JSON with the outputs inline in base64, or as links to ``GET
/v1/results/{id}/{name}`` that expire), ``GET /v1/models``, ``GET /v1/examples[/{name}]`` (the bundled example
images), ``GET /healthz`` (the process answers), ``GET /readyz`` (the model is loaded), ``/docs`` and
``/openapi.json`` (FastAPI's), and the page at ``/`` (:mod:`.page`).

Every error is a JSON body ``{"error": {"status", "code", "message"}}`` with a 4xx status for what the client got
wrong (413 for a body or an image over the limits, 503 with ``Retry-After`` when the queue is full), never a
traceback. The gate (:class:`_Gate`, plain ASGI, in front of everything) checks the API key and the body size
before any route runs. No route takes a path: the examples are looked up by name in the package's own table.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hmac
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mseg_semantic import __version__
from mseg_semantic.errors import InputError, MsegError, TaxonomyError, TooLargeError
from mseg_semantic.examples import EXAMPLES, example_path
from mseg_semantic.fileio import is_image_path
from mseg_semantic.inference.demo import DEFAULT_OUTPUTS, parse_outputs
from mseg_semantic.serve.batcher import Batcher, QueueFullError
from mseg_semantic.serve.engine import MEDIA_TYPES, Engine, Upload
from mseg_semantic.serve.page import PAGE_FILES, page_file
from mseg_semantic.serve.store import ResultStore, StoredOutput

log = logging.getLogger("mseg.serve")

#: The query parameters of POST /v1/segment (any other is refused, so a misspelt one is not silently ignored).
SEGMENT_PARAMETERS = ("outputs", "taxonomy", "links")
#: Where FastAPIOffline serves Swagger UI's files for ``/docs`` (no CDN: the docs work offline).
DOCS_FILES = "/docs-files"
#: Routes open without the API key: the health checks, the page's static files and the API's description (they hold
#: no data and run nothing; the page and /docs ask for the key and send it with each API call).
PUBLIC_PATHS = frozenset(
    {"/healthz", "/readyz", "/", *(f"/page/{name}" for name in PAGE_FILES), "/docs", "/openapi.json"}
)
#: How often a request waiting for its batch checks whether its client is still there (seconds).
DISCONNECT_POLL = 0.1


@dataclass(frozen=True)
class ServeSettings:
    """The service's limits and knobs (``mseg serve`` options)."""

    max_batch: int = 4
    max_wait_ms: float = 10.0
    max_queue: int = 64
    max_body_bytes: int = 25 * 2**20
    api_key: str | None = None
    link_ttl: float = 300.0
    store_bytes: int = 256 * 2**20
    io_workers: int = 1


class ApiError(Exception):
    """An error answered as JSON with ``status`` (and ``headers``, e.g. Retry-After)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "code": code, "message": message}}, status, headers=headers)


def _api_error(exc: Exception) -> ApiError:
    """The HTTP status of one of the package's errors: 413 over a limit, 422 a bad option, else 400."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, QueueFullError):
        return ApiError(503, "busy", str(exc), {"Retry-After": str(exc.retry_after)})
    if isinstance(exc, TooLargeError):
        return ApiError(413, "too_large", str(exc))
    if isinstance(exc, TaxonomyError):
        return ApiError(422, "unknown_taxonomy", str(exc))
    return ApiError(400, "bad_input", str(exc))


# ---------------------------------------------------------------------------- the gate (API key, body size)
class _BodyTooLarge(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, "body_too_large", f"request body over the limit of {limit:,} bytes (--max-body-mb)")


class _Gate:
    """Plain ASGI middleware: the API key on every route but :data:`PUBLIC_PATHS`, and the body size (by its
    Content-Length, then counted as it arrives, for chunked uploads)."""

    def __init__(self, app: ASGIApp, settings: ServeSettings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        key = self.settings.api_key
        public = scope["path"] in PUBLIC_PATHS or scope["path"].startswith(f"{DOCS_FILES}/")
        if key and not public and not _key_matches(headers, key):
            await _drain(receive, self.settings.max_body_bytes)
            response = error_response(
                401,
                "unauthorized",
                "missing or wrong API key: send it as the X-API-Key header or as Authorization: Bearer KEY",
                {"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        limit = self.settings.max_body_bytes
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            error = _BodyTooLarge(limit)
            await error_response(error.status, error.code, error.message, {"Connection": "close"})(scope, receive, send)
            return
        await self.app(scope, _counting(receive, limit), send)


def _key_matches(headers: dict[str, str], key: str) -> bool:
    given = headers.get("x-api-key") or ""
    auth = headers.get("authorization", "")
    if not given and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    return hmac.compare_digest(given.encode(), key.encode())


def _counting(receive: Receive, limit: int) -> Receive:
    received = 0

    async def counted() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise _BodyTooLarge(limit)
        return message

    return counted


async def _drain(receive: Receive, limit: int) -> None:
    """Read and drop a request body (at most ``limit`` bytes), so that an early answer does not cut the client off
    mid-upload."""
    received = 0
    while received <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        received += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


# ---------------------------------------------------------------------------- the app
@dataclass
class _State:
    engine: Engine
    settings: ServeSettings
    batcher: Batcher | None = None
    store: ResultStore | None = None
    io: ThreadPoolExecutor | None = None

    async def run_io(self, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)`` on an I/O thread (decoding, encoding: CPU work kept off the event loop)."""
        assert self.io is not None
        return await asyncio.get_running_loop().run_in_executor(self.io, functools.partial(function, *args))


def create_app(engine: Engine, settings: ServeSettings, on_load_failed: Callable[[str], None] | None = None) -> FastAPI:
    """The service; the model starts loading (on a thread of its own) when the app starts."""
    state = _State(engine, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.store = ResultStore(settings.link_ttl, settings.store_bytes)
        state.io = ThreadPoolExecutor(settings.io_workers, thread_name_prefix="mseg-io")
        state.batcher = Batcher(
            engine.run, max_batch=settings.max_batch, max_wait=settings.max_wait_ms / 1000, max_queue=settings.max_queue
        )
        threading.Thread(target=_load, args=(engine, on_load_failed), name="mseg-loader", daemon=True).start()
        try:
            yield
        finally:
            state.batcher.close()
            state.io.shutdown(wait=False, cancel_futures=True)

    app = FastAPIOffline(  # a FastAPI app whose /docs uses Swagger UI's files from the fastapi-offline package
        title="mseg serve",
        version=__version__,
        lifespan=lifespan,
        redoc_url=None,
        static_url=DOCS_FILES,
        description="Semantic segmentation with an MSeg model: POST an image, get label maps, colour maps, "
        "overlays, confidence maps and the share of each class.",
    )
    app.add_middleware(_Gate, settings=settings)
    _add_error_handlers(app)
    _add_routes(app, state)
    if settings.api_key:
        _declare_key(app)
    return app


def _declare_key(app: FastAPI) -> None:
    """With an API key, the OpenAPI schema says so, and the Authorize button of ``/docs`` sends it."""
    schema = app.openapi()
    schema.setdefault("components", {}).setdefault("securitySchemes", {})["apiKey"] = {
        "type": "apiKey", "in": "header", "name": "X-API-Key",
    }  # fmt: skip
    schema["security"] = [{"apiKey": []}]


def _load(engine: Engine, on_load_failed: Callable[[str], None] | None) -> None:
    engine.load()
    if engine.error is not None:
        log.error("the model could not be loaded: %s", engine.error)
        if on_load_failed is not None:
            on_load_failed(engine.error)


def _add_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, exc: Exception) -> Response:
        error = _api_error(exc)
        return error_response(error.status, error.code, error.message, error.headers)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = "not_found" if exc.status_code == 404 else "http_error"
        return error_response(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return error_response(422, "invalid_parameter", problems)

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal", f"internal error ({type(exc).__name__}); the server keeps running")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(MsegError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)


def _add_routes(app: FastAPI, state: _State) -> None:
    engine = state.engine

    @app.get("/healthz", tags=["health"], summary="liveness: the process answers")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="readiness: the model is loaded")
    async def readyz() -> Response:
        if engine.ready.is_set():
            return JSONResponse({"ready": True, "model": engine.name})
        if engine.error is not None:
            return error_response(503, "load_failed", f"the model could not be loaded: {engine.error}")
        return error_response(503, "loading", "the model is loading", {"Retry-After": "1"})

    @app.get("/v1/models", tags=["model"], summary="the model served, its taxonomies and settings")
    async def models() -> dict:
        assert state.batcher is not None
        return {"models": [{**engine.describe(), "queue": state.batcher.snapshot()}]}

    @app.get("/v1/examples", tags=["examples"], summary="the example images that ship with the package")
    async def examples() -> dict:
        return {"examples": [{"name": name, "url": f"/v1/examples/{name}"} for name in _image_examples()]}

    @app.get("/v1/examples/{name}", tags=["examples"], summary="one bundled example image")
    async def example(name: str) -> Response:
        if name not in _image_examples():
            raise ApiError(404, "not_found", f"unknown example {name!r}; examples: {', '.join(_image_examples())}")
        path = example_path(name)
        data = await state.run_io(path.read_bytes)
        return Response(data, media_type="image/png" if path.suffix == ".png" else "image/jpeg")

    @app.get("/v1/results/{result_id}/{name}", tags=["segment"], summary="an output kept for ?links=true")
    async def result(result_id: str, name: str) -> Response:
        assert state.store is not None
        stored = state.store.get(result_id, name)
        if stored is None:
            raise ApiError(
                404,
                "not_found",
                f"no output {name!r} of result {result_id!r}: unknown, or expired "
                f"(links last {state.settings.link_ttl:g} s)",
            )
        return Response(stored.data, media_type=stored.media_type)

    _add_segment_route(app, state)
    _add_page_routes(app)


def _image_examples() -> list[str]:
    return [name for name in EXAMPLES if is_image_path(example_path(name))]


def _add_page_routes(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        data, media_type = page_file("index.html")
        return Response(data, media_type=media_type)

    @app.get("/page/{name}", include_in_schema=False)
    async def page(name: str) -> Response:
        if name not in PAGE_FILES:
            raise ApiError(404, "not_found", f"no page file {name!r}")
        data, media_type = page_file(name)
        return Response(data, media_type=media_type)


def _add_segment_route(app: FastAPI, state: _State) -> None:
    outputs_help = (
        f"comma-separated, any of {','.join(MEDIA_TYPES)} (label ids PNG, colour PNG, overlay JPEG, "
        "16-bit confidence PNG); empty: the class shares only"
    )

    @app.post("/v1/segment", tags=["segment"], summary="segment an image (raw body or multipart field 'image')")
    async def segment(
        request: Request,
        outputs: str = Query(",".join(DEFAULT_OUTPUTS), description=outputs_help),
        taxonomy: str | None = Query(None, description="output taxonomy (GET /v1/models); default: the model's"),
        links: bool = Query(False, description="give the outputs as links that expire instead of inline base64"),
    ) -> Response:
        return JSONResponse(await _segment(request, state, outputs, taxonomy, links))


async def _segment(request: Request, state: _State, outputs: str, taxonomy: str | None, links: bool) -> dict:
    """What POST /v1/segment does: admit (or 503), read and check, queue for a batch, encode the answer."""
    engine, batcher = state.engine, state.batcher
    assert batcher is not None
    try:  # what needs no upload is checked before the upload is read
        if not engine.ready.is_set():
            raise ApiError(503, "loading", "the model is loading; retry shortly", {"Retry-After": "2"})
        kinds = _check_query(request, outputs)
        chosen = engine.check_taxonomy(taxonomy)
        slot = batcher.acquire()
    except (ApiError, MsegError):
        await _drain(request.receive, state.settings.max_body_bytes)
        raise
    try:
        data, name = await _read_upload(request)
        key, upload = await state.run_io(engine.prepare, data, chosen, name)
        del data
        result = await _unless_disconnected(request, batcher.submit(key, upload))
        names, classes, encoded = await state.run_io(engine.answer, upload, result, kinds)
    finally:
        slot.release()
    height, width = upload.rgb.shape[:2]
    return {
        "model": engine.name,
        "taxonomy": chosen,
        "width": width,
        "height": height,
        "class_names": names,
        "classes": classes,
        "outputs": _outputs(state, encoded, links),
    }


def _check_query(request: Request, outputs: str) -> tuple[str, ...]:
    unknown = sorted(set(request.query_params) - set(SEGMENT_PARAMETERS))
    if unknown:
        raise ApiError(
            422,
            "unknown_parameter",
            f"unknown query parameter {unknown[0]!r}; parameters: {', '.join(SEGMENT_PARAMETERS)}",
        )
    if not outputs.strip():
        return ()
    try:
        return parse_outputs(outputs, choices=tuple(MEDIA_TYPES), option="outputs")
    except InputError as exc:
        raise ApiError(422, "unknown_output", str(exc)) from None


async def _read_upload(request: Request) -> tuple[bytes, str]:
    """The image bytes of a request and a name for messages: the multipart field ``image`` (or its one file), or
    the raw body."""
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        return await request.body(), "upload"
    form = await request.form(max_files=4, max_fields=16)
    try:
        files = [value for value in form.values() if isinstance(value, UploadFile)]
        chosen = form.get("image")
        if not isinstance(chosen, UploadFile):
            if len(files) != 1:
                raise ApiError(
                    400,
                    "no_image",
                    f"the multipart form has {len(files)} files and no field 'image'; "
                    "send the image as the field 'image'",
                )
            chosen = files[0]
        return await chosen.read(), chosen.filename or "upload"
    finally:
        await form.close()


async def _unless_disconnected(request: Request, waiting: Awaitable[Any]) -> Any:
    """Await ``waiting``; if the client goes away first, cancel it (its job leaves the queue) and stop."""
    task = asyncio.ensure_future(waiting)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise ApiError(499, "client_gone", "the client disconnected before its turn")
    finally:
        if not task.done():
            task.cancel()


def _outputs(state: _State, encoded: dict[str, bytes], links: bool) -> dict[str, dict]:
    """Each output inline (base64) or, with ``links``, as a link to the store."""
    if not links:
        return {
            kind: {"media_type": MEDIA_TYPES[kind], "base64": base64.b64encode(data).decode("ascii")}
            for kind, data in encoded.items()
        }
    assert state.store is not None
    key = state.store.put({kind: StoredOutput(data, MEDIA_TYPES[kind]) for kind, data in encoded.items()})
    return {
        kind: {
            "media_type": MEDIA_TYPES[kind],
            "url": f"/v1/results/{key}/{kind}",
            "expires_in": state.settings.link_ttl,
        }
        for kind in encoded
    }


__all__ = ["ApiError", "ServeSettings", "Upload", "create_app"]
