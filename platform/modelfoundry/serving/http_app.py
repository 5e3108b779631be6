"""The FastAPI app every ingress serves (serving/ingress.py, serving/ingress_v2.py declare their
routes on it) and its error handlers: a RequestError is its status and message as JSON, a bug is
a 500 with a request id to quote, never the exception's text."""

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelfoundry.serving.openai_api import error_body
from modelfoundry.serving.requests import RequestError
from modelfoundry.serving.verbs import request_id

log = logging.getLogger("ray.serve")


# the docs page and the schema are the Ingress's own routes below (behind its Host check and keys;
# Swagger UI's files served from the package, no CDN)
app = FastAPI(
    title="modelfoundry model service",
    description="KServe v1 / TF-Serving style REST API",
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
)


def _openai(request: Request) -> bool:
    """The OpenAI-compatible routes answer errors in OpenAI's shape (serving/openai_api.py)."""
    return request.url.path.endswith(("/v1/completions", "/v1/chat/completions"))


def _error(request: Request, err: RequestError) -> JSONResponse:
    body = error_body(err) if _openai(request) else {"error": err.message}
    return JSONResponse(body, status_code=err.status, headers=err.headers)


@app.exception_handler(RequestError)
async def _request_error(request: Request, err: RequestError) -> JSONResponse:
    return _error(request, err)


@app.exception_handler(Exception)
async def _unexpected(request: Request, err: Exception) -> JSONResponse:
    # a bug, not a bad request: logged with its traceback and the request id; the client gets the
    # id to quote, never the exception's text
    rid = request_id()
    log.error("request %s failed", rid, exc_info=err)
    return _error(request, RequestError(500, f"internal error (request id {rid})"))


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
    return _error(request, RequestError(err.status_code, str(err.detail), err.headers))
