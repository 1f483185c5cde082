"""HTTP routes: `/` (the page), `POST /predict`, `GET /health`, `GET /model`. Errors are one-line JSON."""

from __future__ import annotations

import logging
from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from protadapt.data.io import DataError
from protadapt.serve.parsing import RequestError
from protadapt.serve.service import ModelService

logger = logging.getLogger(__name__)


def create_app(service: ModelService) -> FastAPI:
    """An app bound to one loaded model; inference runs in worker threads, never on the event loop."""
    app = FastAPI(title="protadapt", docs_url=None, redoc_url=None)  # the bundled docs pages load a CDN
    page = files("protadapt.serve").joinpath("index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/model")
    def model() -> dict:
        return service.card

    @app.post("/predict")
    async def predict(request: Request) -> dict:
        body = await read_limited(request, service.settings.max_bytes)
        return await run_in_threadpool(service.predict_body, body, request.headers.get("content-type", ""))

    app.add_exception_handler(RequestError, _request_error)
    app.add_exception_handler(DataError, _data_error)
    app.add_exception_handler(Exception, _unexpected_error)
    return app


async def read_limited(request: Request, max_bytes: int) -> bytes:
    """The body, refused with 413 as soon as it (or its declared length) passes `max_bytes`."""
    declared = request.headers.get("content-length", "")
    too_large = RequestError(413, f"request body over {max_bytes} bytes; split the input "
                                  "or start the server with a larger --max-bytes")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def _request_error(request: Request, error: RequestError) -> JSONResponse:
    return JSONResponse({"error": str(error)}, status_code=error.status_code)


async def _data_error(request: Request, error: DataError) -> JSONResponse:
    return JSONResponse({"error": str(error)}, status_code=422)


async def _unexpected_error(request: Request, error: Exception) -> JSONResponse:
    logger.exception("error while answering %s %s", request.method, request.url.path)
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return JSONResponse({"error": f"internal error: {first_line}"}, status_code=500)
